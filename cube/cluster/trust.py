"""How Cube's processes trust each other on a LAN where anyone can answer mDNS (standard library only, so the CLI
starts fast). It decides what is sent to whom:

- TLS by default, with the cluster's CA pinned: a peer is a member when its certificate chains to the CA and says
  the expected role (`pki`). Manager and workers authenticate each other with certificates (mutual TLS); the CLI
  sends the cluster token only over a connection whose peer proved itself a manager this way.
- The join token, `CUBE1-<SHA-256 of the CA certificate>-<secret>` (as Swarm's `SWMTKN-1-<CA hash>-...`), lets a new
  node pin the CA before it trusts anything the network says. A bare secret works too: the manager then proves it
  holds the secret with an HMAC over a fresh nonce and the CA's fingerprint before the CA is believed.
- A joining worker proves the secret with an HMAC bound to its new public key; the secret itself never crosses the
  wire, and a proof seen on the wire is worth nothing for any other key.
- `--insecure` (plain HTTP) keeps the old bearer token, sent only after the peer answered a challenge (an HMAC of a
  fresh nonce and its role). It protects against a fake advertiser, not against someone who can relay traffic.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import ssl
from dataclasses import dataclass, replace

from cube.core.errors import CubeError, Untrusted

PREFIX = "CUBE1"
TLS_DIR = "tls"
CA_FILE, CA_KEY = "ca.pem", "ca.key"
CERT_FILE, KEY_FILE = "node.pem", "node.key"


def fingerprint(ca_pem: str) -> str:
    """The hex SHA-256 of a certificate's DER bytes (what a join token pins)."""
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(ca_pem)).hexdigest()


def join_token(secret: str, ca_pem: str | None) -> str:
    """What `cube token` prints: the CA's fingerprint and the secret (the bare secret on an insecure cluster)."""
    return f"{PREFIX}-{fingerprint(ca_pem)}-{secret}" if ca_pem else secret


@dataclass(frozen=True)
class Token:
    secret: str
    pin: str | None = None  # the CA fingerprint a join token carries


def parse_token(value: str | None) -> Token | None:
    if not value:
        return None
    value = value.strip()
    parts = value.split("-", 2)
    if len(parts) == 3 and parts[0] == PREFIX and len(parts[1]) == 64:
        return Token(parts[2], parts[1].lower())
    return Token(value)


def new_secret() -> str:
    """192 random bits as hex: no '-' (which separates a join token's parts, and starts a command-line flag)."""
    return secrets.token_hex(24)


def proof(secret: str, purpose: str, *parts: str) -> str:
    """An HMAC-SHA256 of the purpose and parts under the secret: what proves the secret without sending it."""
    message = "\n".join((purpose, *parts)).encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def proves(secret: str, given: object, purpose: str, *parts: str) -> bool:
    return isinstance(given, str) and hmac.compare_digest(given.encode(), proof(secret, purpose, *parts).encode())


def nonce() -> str:
    return base64.urlsafe_b64encode(os.urandom(18)).decode()


def serial_key(serial: object) -> str:
    """A certificate serial as one spelling: lower-case hex without leading zeros (OpenSSL pads to whole bytes,
    `ssl` and cheroot print it in upper case)."""
    try:
        return format(int(str(serial), 16), "x")
    except ValueError:
        return str(serial).lower()


def role_of(cert: dict | None) -> tuple[str, str, str]:
    """(role, node id, serial as `serial_key` spells it) of a certificate as `ssl` parses it; "" when absent."""
    if not cert:
        return "", "", ""
    fields = {key: value for rdn in cert.get("subject", ()) for key, value in rdn}
    return (
        fields.get("organizationalUnitName", ""),
        fields.get("commonName", ""),
        serial_key(cert.get("serialNumber", "")),
    )


@dataclass
class Trust:
    """How one process talks to the cluster. `insecure`: plain HTTP. Otherwise TLS with `ca` (PEM) as the only
    root, this member's own certificate when it has one, and `peer_role` required of the peers it calls.
    `revoked(serial)` tells which member certificates the manager has revoked (`cube node rm`)."""

    insecure: bool = False
    ca: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    peer_role: str = "manager"
    revoked: object = None  # Callable[[str], bool] | None

    def url(self, address: str) -> str:
        """A peer's address as a URL: the scheme given, else this cluster's (https, or http when insecure)."""
        address = address.strip().rstrip("/")
        if "://" in address:
            return address
        return f"{'http' if self.insecure else 'https'}://{address}"

    def for_scheme(self, scheme: str) -> Trust:
        """The trust to use for a URL of `scheme`: a plain http:// URL is an insecure peer, whatever ours is."""
        if scheme == "http" and not self.insecure:
            return replace(self, insecure=True)
        return self

    def client_context(self) -> ssl.SSLContext | None:
        if self.insecure:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # Members are known by the CA that signed them and the role written in their certificate, not by host
        # names: addresses on a LAN change, and a Pi found over mDNS has no name a public CA would sign.
        context.check_hostname = False
        if self.ca:
            context.load_verify_locations(cadata=self.ca)
            context.verify_mode = ssl.CERT_REQUIRED
        else:  # only to fetch the CA itself, which is then checked against a pin or a proof
            context.verify_mode = ssl.CERT_NONE
        if self.certfile and self.keyfile:
            context.load_cert_chain(self.certfile, self.keyfile)
        return context

    def check_peer(self, cert: dict | None, url: str) -> None:
        """After the TLS handshake: the peer must have the role we expect and not be revoked."""
        if self.insecure or not self.ca:
            return
        role, node, serial = role_of(cert)
        if role != self.peer_role:
            raise Untrusted(f"{url} is a cluster {role or 'member of no role'}, not the {self.peer_role} expected")
        if callable(self.revoked) and self.revoked(serial):
            raise Untrusted(f"{url} presents the certificate of node {node}, which was removed from the cluster")

    def for_clients(self) -> Trust:
        """How a client of this member's server (the CLI on its machine) trusts it: the same CA, no certificate of
        its own, the member's role."""
        return Trust(
            insecure=self.insecure, ca=self.ca, peer_role="manager" if self.peer_role == "worker" else "worker"
        )

    def server_context(self) -> ssl.SSLContext:
        """The context of a member's server: its own certificate, and client certificates checked against the CA
        when a client presents one. Optional at this layer, so that /health answers anyone; every other route
        requires the certificate's role or the token (api.Access)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if not (self.certfile and self.keyfile and self.ca):
            raise CubeError("a TLS server needs its certificate, key and the cluster CA")
        context.load_cert_chain(self.certfile, self.keyfile)
        context.load_verify_locations(cadata=self.ca)
        context.verify_mode = ssl.CERT_OPTIONAL
        return context


def member_files(directory: str) -> tuple[str, str, str]:
    """(CA, certificate, key) paths of the member whose data directory is `directory`."""
    base = os.path.join(directory, TLS_DIR)
    return os.path.join(base, CA_FILE), os.path.join(base, CERT_FILE), os.path.join(base, KEY_FILE)


def member_trust(directory: str, peer_role: str) -> Trust | None:
    """The trust of a member that has joined (its files exist), or None."""
    ca_path, cert_path, key_path = member_files(directory)
    if not all(os.path.exists(path) for path in (ca_path, cert_path, key_path)):
        return None
    with open(ca_path, encoding="ascii") as handle:
        ca = handle.read()
    return Trust(ca=ca, certfile=cert_path, keyfile=key_path, peer_role=peer_role)
