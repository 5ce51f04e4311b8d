"""Where Cube keeps what must survive a `kill -9`: one interface (`base.Store`), three backends (`EtcdStore`
is imported from cube.store.etcd where it is used)."""

from cube.store.base import EVENT_RETENTION, Store, node_id
from cube.store.disk import DiskStore
from cube.store.memory import MemoryStore

__all__ = ["EVENT_RETENTION", "DiskStore", "MemoryStore", "Store", "node_id"]
