"""Discovery: how Cube nodes find each other on a LAN with mDNS / DNS-SD (zeroconf).

Workers advertise `_cube-worker._tcp.local.`, the manager `_cube-manager._tcp.local.`. This module decides
what goes on the wire and how peers are named. An instance is named `<slug of name>-<suffix>`, the suffix
taken from the node id (stable across restarts, so a restarted node replaces its old record instead of
sitting beside it) or random; a name conflict found by probing gets a fresh random suffix, so two nodes
both called "pi" are both found. The human name travels in the TXT record with id, port, arch and version;
secrets never do (mDNS is readable by anyone on the LAN), and the Advertiser refuses them. By default it
binds and advertises only the machine's non-loopback IPv4 addresses, leaving out container bridges.

mDNS only finds addresses: a node killed without saying goodbye stays listed until its records expire,
so liveness must come from heartbeats. zeroconf is imported lazily: the CLI loads this module cheaply.
"""

from __future__ import annotations

import ipaddress
import logging
import platform
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from cube import __version__
from cube.core.errors import Unavailable

log = logging.getLogger(__name__)

WORKER_SERVICE = "_cube-worker._tcp.local."
MANAGER_SERVICE = "_cube-manager._tcp.local."
SERVICES = {"worker": WORKER_SERVICE, "manager": MANAGER_SERVICE}

# A TXT key containing any of these words is refused: anyone on the LAN can read TXT records.
SECRET_WORDS = ("token", "secret", "password", "passwd", "auth", "credential")
# Interfaces that are not the LAN: container and VM bridges whose addresses other nodes cannot reach.
NOT_LAN = re.compile(r"^(lo|docker\d*|br-[0-9a-f]+|veth|cni|flannel|cali|virbr|lxcbr|podman|kube)")
RESOLVE_STEP_MS = 400  # resolve in short steps so close() never waits on a slow answer
RESOLVE_STEPS = 8
NAME_ATTEMPTS = 4

Callback = Callable[["Found"], None]


@dataclass
class Found:
    """One discovered instance: its unique instance name, the address to reach it, and its TXT record."""

    name: str
    host: str
    port: int
    properties: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The advertised scheme (https unless the peer says it is insecure). Believing an advertisement is safe
        either way: over TLS the peer's certificate decides, over http its answer to a challenge (trust.py)."""
        scheme = "http" if self.properties.get("scheme") == "http" else "https"
        return f"{scheme}://{self.host}:{self.port}"


def _interfaces() -> list[tuple[str, ipaddress.IPv4Interface]]:
    import ifaddr  # a zeroconf dependency; lazy for the same reason as zeroconf

    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if ip.is_IPv4:
                found.append((adapter.nice_name, ipaddress.IPv4Interface(f"{ip.ip}/{ip.network_prefix}")))
    return found


def local_addresses() -> list[str]:
    """The IPv4 addresses other LAN nodes can reach us on: not loopback, not a container bridge."""
    addresses = {str(iface.ip) for name, iface in _interfaces() if not iface.ip.is_loopback and not NOT_LAN.match(name)}
    return sorted(addresses)


def _service(kind: str) -> str:
    try:
        return SERVICES[kind]
    except KeyError:
        raise ValueError(f"kind must be one of {sorted(SERVICES)}, not {kind!r}") from None


def _slug(text: str, limit: int) -> str:
    """A DNS-label-safe piece of text (also used for the host name, which must be a valid label)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-")


def txt_record(name: str, port: int, properties: dict[str, str] | None) -> dict[str, str]:
    """The TXT properties to advertise: the caller's, plus name, port, arch and version; never a secret."""
    props = {str(k): str(v) for k, v in (properties or {}).items()}
    for key in props:
        if any(word in key.lower() for word in SECRET_WORDS):
            raise ValueError(f"refusing to advertise {key!r}: mDNS TXT records are readable by the whole LAN")
    props.setdefault("name", name)
    props.setdefault("port", str(port))
    props.setdefault("arch", platform.machine())
    props.setdefault("version", __version__)
    return props


class Advertiser:
    """Registers one service instance until close() (which sends goodbyes: call it on SIGTERM)."""

    def __init__(
        self,
        kind: str,
        name: str,
        port: int,
        properties: dict[str, str] | None = None,
        addresses: list[str] | None = None,
        interfaces=None,
    ):
        from zeroconf import IPVersion, Zeroconf

        self.kind = kind
        self.service = _service(kind)
        self.port = int(port)
        self.properties = txt_record(name, self.port, properties)
        self.addresses = list(addresses) if addresses else local_addresses()
        if not self.addresses:
            raise Unavailable("no non-loopback IPv4 address to advertise on")
        self._lock = threading.Lock()
        self._closed = False
        # Binding only to the advertised addresses keeps mDNS off loopback and container bridges.
        self._zc = Zeroconf(interfaces=interfaces or self.addresses, ip_version=IPVersion.V4Only)
        try:
            self.info = self._register(name, self.properties.get("id"))
        except BaseException:
            self._zc.close()
            raise

    @property
    def instance(self) -> str:
        """The unique instance name, e.g. "pi-3f9a1c" (the human name is properties["name"])."""
        return self.info.name[: -len(self.service) - 1]

    def _info(self, label: str):
        from zeroconf import ServiceInfo

        return ServiceInfo(
            self.service,
            f"{label}.{self.service}",
            port=self.port,
            properties=self.properties,
            parsed_addresses=self.addresses,
            server=f"{label}-{self.kind}.local.",
        )

    def _register(self, name: str, node_id: str | None):
        from zeroconf import NonUniqueNameException

        base = _slug(name, 40) or "cube"
        suffix = _slug(node_id or "", 8) or secrets.token_hex(3)
        for _ in range(NAME_ATTEMPTS):
            info = self._info(f"{base}-{suffix}")
            try:
                # Our own renaming (not zeroconf's "-2") so the host name changes with the instance name.
                self._zc.register_service(info, allow_name_change=False)
                return info
            except NonUniqueNameException:
                log.info("mDNS name %s is taken, picking another", info.name)
                suffix = secrets.token_hex(3)
        raise Unavailable(f"no free mDNS name for {name!r} after {NAME_ATTEMPTS} tries")

    def close(self) -> None:
        """Send goodbye packets (so browsers drop us within about a second) and release the sockets."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        # Zeroconf.close() unregisters every service it holds (three goodbyes, 125 ms apart) first.
        self._zc.close()

    def __enter__(self) -> "Advertiser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Browser:
    """Watches one service type; keeps the resolved instances and calls on_add / on_remove as they change.

    on_add is called for new instances and for changed ones (new address, port or TXT); callbacks run on
    zeroconf's browser thread, so they should be quick.
    """

    def __init__(self, kind: str, on_add: Callback | None = None, on_remove: Callback | None = None, interfaces=None):
        from zeroconf import InterfaceChoice, IPVersion, ServiceBrowser, Zeroconf

        self.service = _service(kind)
        self._on_add = on_add
        self._on_remove = on_remove
        self._found: dict[str, Found] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        # Prefer an address on one of our own subnets when a peer advertises several.
        self._networks = [iface.network for name, iface in _interfaces() if not iface.ip.is_loopback]
        default = local_addresses() or InterfaceChoice.All
        self._zc = Zeroconf(interfaces=interfaces or default, ip_version=IPVersion.V4Only)
        try:
            self._browser = ServiceBrowser(self._zc, self.service, handlers=[self._on_change])
        except BaseException:
            self._zc.close()
            raise

    def found(self) -> list[Found]:
        with self._lock:
            return sorted(self._found.values(), key=lambda f: f.name)

    def _on_change(self, zeroconf, service_type: str, name: str, state_change) -> None:
        from zeroconf import ServiceStateChange

        try:
            if state_change is ServiceStateChange.Removed:
                self._remove(name)
            else:
                self._resolve(zeroconf, name)
        except Exception:  # a failing callback must not kill zeroconf's browser thread
            log.exception("mDNS handler failed for %s", name)

    def _remove(self, name: str) -> None:
        with self._lock:
            gone = self._found.pop(name, None)
        if gone and self._on_remove:
            self._on_remove(gone)

    def _resolve(self, zeroconf, name: str) -> None:
        from zeroconf import ServiceInfo

        info = ServiceInfo(self.service, name)
        # Announcements carry SRV, TXT and A together, so the cache usually answers at once.
        resolved = info.load_from_cache(zeroconf)
        for _ in range(RESOLVE_STEPS):
            if resolved or self._closed.is_set():
                break
            resolved = info.request(zeroconf, RESOLVE_STEP_MS)
        found = self._to_found(info) if resolved else None
        if found is None:
            log.info("could not resolve mDNS instance %s", name)
            return
        with self._lock:
            changed = self._found.get(name) != found
            self._found[name] = found
        if changed and self._on_add:
            self._on_add(found)

    def _to_found(self, info) -> Found | None:
        from zeroconf import IPVersion

        addresses = info.parsed_addresses(IPVersion.V4Only)
        if not addresses or info.port is None:
            return None
        ours = [a for a in addresses if any(ipaddress.IPv4Address(a) in net for net in self._networks)]
        props = {k: v or "" for k, v in info.decoded_properties.items()}
        return Found(
            name=info.name[: -len(self.service) - 1], host=(ours or addresses)[0], port=info.port, properties=props
        )

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._browser.cancel()
        self._zc.close()

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def find_manager(timeout: float = 3.0, interfaces=None, skip=()) -> Found | None:
    """The first manager that resolves within `timeout` seconds, or None (returns as soon as one does). `skip`:
    URLs of advertisers already found not to be our manager (anyone can advertise one)."""
    first: list[Found] = []
    ready = threading.Event()

    def add(found: Found) -> None:
        if found.url in skip:
            return
        first.append(found)
        ready.set()

    browser = Browser("manager", on_add=add, interfaces=interfaces)
    try:
        ready.wait(timeout)
        return first[0] if first else None
    finally:
        browser.close()
