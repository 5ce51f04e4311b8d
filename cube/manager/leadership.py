"""Which manager leads when several share one etcd (`cube manager --etcd URL,...`): the one holding the key
`<prefix>leader`, created only while absent (a txn comparing its create_revision with 0) and tied to a lease of TTL
seconds that the leader keeps alive. Cube writes no consensus of its own: etcd's decides.

What it decides:
- Fencing: once elected, the manager's store requires the key to hold this campaign's value in every transaction
  (`EtcdStore.fence`), so a leader that was paused or cut off past its lease, while another was elected, cannot
  write: etcd refuses the whole batch and nothing of it lands.
- Losing: a keep-alive that etcd answers "gone", or no keep-alive answered for a whole TTL, means another manager
  may lead by now. `lost` is set and the manager stops (`cube manager` exits non-zero, systemd starts it again as a
  standby), as Kubernetes' controller manager does: a fresh start reloads everything from etcd.
- Standbys poll the key (a range read every POLL seconds, no long-lived watch stream to babysit) and campaign when
  it is gone, so a leader killed with -9 is replaced within TTL + POLL + one campaign.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable

from cube.core.errors import StorageFailed

log = logging.getLogger("cube")
TTL = 3  # seconds: the lease a leader keeps alive; its death is noticed within this
POLL = 0.25  # seconds between a standby's looks at the leader key


class Leadership:
    """One manager's campaign for `<store.prefix>leader` on `store` (an EtcdStore). Lease calls use a second
    client with a short timeout: a keep-alive must not wait out the store's timeout."""

    def __init__(self, store, name: str, ttl: int = TTL, poll: float = POLL):
        from cube.store.etcd_gateway import Gateway

        self.store, self.ttl, self.poll = store, int(ttl), poll
        self.key = store.prefix + "leader"
        self.value = f"{name} {secrets.token_hex(4)}"  # this campaign's: a restarted manager is another leader
        self._etcd = Gateway(store.endpoints, timeout=max(0.5, self.ttl / 3))
        self.lease = 0
        self.leading = threading.Event()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None
        self.on_lost: Callable[[], object] | None = None  # called once when the leadership is lost

    def holder(self) -> str | None:
        """Who leads now (the key's value: name and campaign), or None."""
        return self._etcd.read_key(self.key)

    def try_lead(self) -> bool:
        """One attempt: lead if nobody does. On success the store is fenced and the lease kept alive."""
        lease = self._etcd.lease(self.ttl)
        created, _holder = self._etcd.create(self.key, self.value, lease)
        if not created:
            self._etcd.revoke(lease)
            return False
        self.lease = lease
        self.store.fence(self.key, self.value, refused=lambda: self._lose("etcd refused a write: another leads"))
        self.leading.set()
        self._keeper = threading.Thread(target=self._keep, daemon=True, name="cube-leadership")
        self._keeper.start()
        log.info("leading (etcd key %s, lease %x, TTL %d s)", self.key, lease, self.ttl)
        return True

    def campaign(self) -> bool:
        """Block until this manager leads (True) or `close()` is called (False). etcd that cannot be reached is
        retried: a standby waits for it as it waits for the leader."""
        said = ""
        while not self._stop.is_set():
            try:
                if self.holder() is None and self.try_lead():
                    return True
            except StorageFailed as error:
                if error.message != said:  # once per cause, not every POLL
                    log.warning("cannot campaign for the leadership: %s", error.message)
                    said = error.message
            self._stop.wait(self.poll)
        return False

    def _keep(self) -> None:
        """Keep the lease alive every TTL/3 s; set `lost` when etcd says it is gone or a TTL passes unanswered."""
        answered = time.monotonic()
        while not self._stop.wait(self.ttl / 3):
            try:
                remaining = self._etcd.keep_alive(self.lease)
            except StorageFailed as error:
                if time.monotonic() - answered < self.ttl:
                    continue
                self._lose(f"etcd unanswered for {self.ttl} s ({error.message})")
                return
            if remaining <= 0:
                self._lose("its lease expired")
                return
            answered = time.monotonic()

    def _lose(self, why: str) -> None:
        if self.lost.is_set():
            return  # the keeper and a refused write may both find it
        log.error("lost the leadership: %s; stopping (a new start campaigns as a standby)", why)
        self.leading.clear()
        self.lost.set()
        if self.on_lost is not None:
            self.on_lost()

    def close(self) -> None:
        """Stop campaigning; a leader steps down at once (its key and lease go) so a standby need not wait a TTL."""
        self._stop.set()
        if self._keeper is not None:
            self._keeper.join(timeout=self.ttl)
        if self.leading.is_set():
            self.leading.clear()
            try:
                self._etcd.delete_key(self.key, self.value)
                self._etcd.revoke(self.lease)
            except StorageFailed as error:
                log.warning("could not step down cleanly (the lease expires in %d s): %s", self.ttl, error.message)
        self._etcd.close()
