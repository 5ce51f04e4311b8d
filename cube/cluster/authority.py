"""The manager's side of trust: its cluster CA, its own member certificate, the secret of the join token, and the
record of the members it signed and revoked. It decides who joins: a worker that proves the secret (an HMAC bound
to the key it asks a certificate for, see trust.py) gets a certificate with the role `worker` and its node id; a
node that joins again gets a new certificate and its old one is revoked; `cube node rm` revokes a node's
certificate, after which the manager neither polls it nor lets it register.

Members and revocations are kept in the manager's store (kinds `members` and `revoked`); the CA, the manager's
certificate and the secret in files of the data directory, mode 0600, written once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from cube.cluster import pki
from cube.cluster.config import write_private
from cube.cluster.trust import (
    CA_FILE,
    CA_KEY,
    TLS_DIR,
    Trust,
    fingerprint,
    join_token,
    member_files,
    member_trust,
    new_secret,
    proof,
    serial_key,
)
from cube.cluster.trust import proves as proves_secret
from cube.core.errors import BadRequest, Untrusted

log = logging.getLogger("cube.trust")
MANAGER_CERT, MANAGER_KEY = "manager.pem", "manager.key"
MAX_CSR = 4096  # bytes: an EC P-256 request is about 400


class Authority:
    def __init__(self, directory: str, secret: str, store, manager_id: str):
        self.directory = directory
        self.store = store
        self._secret = secret
        self._lock = threading.Lock()
        base = os.path.join(directory, TLS_DIR)
        self.ca_path, self._ca_key_path = os.path.join(base, CA_FILE), os.path.join(base, CA_KEY)
        self.certfile, self.keyfile = os.path.join(base, MANAGER_CERT), os.path.join(base, MANAGER_KEY)
        if not os.path.exists(self.ca_path) or not os.path.exists(self._ca_key_path):
            cert, key = pki.make_ca(f"cube cluster CA {socket.gethostname()}")
            write_private(self._ca_key_path, key)
            write_private(self.ca_path, cert)
            log.info("created the cluster CA (%s)", fingerprint(cert.decode()))
        with open(self.ca_path, "rb") as handle:
            self.ca = handle.read()
        with open(self._ca_key_path, "rb") as handle:
            self._ca_key = handle.read()
        if not os.path.exists(self.certfile) or not os.path.exists(self.keyfile):
            cert, key, _ = pki.issue(self.ca, self._ca_key, "manager", manager_id)
            write_private(self.keyfile, key)
            write_private(self.certfile, cert)
        self._revoked = {serial_key(r.get("serial", "")) for r in store.values("revoked")}

    @property
    def secret(self) -> str:
        return self._secret

    @property
    def ca_pem(self) -> str:
        return self.ca.decode()

    def join_token(self) -> str:
        return join_token(self._secret, self.ca_pem)

    def trust(self) -> Trust:
        """How the manager calls its workers: its own certificate, workers' certificates checked, revoked refused."""
        return Trust(
            ca=self.ca_pem, certfile=self.certfile, keyfile=self.keyfile, peer_role="worker", revoked=self.revoked
        )

    def revoked(self, serial: str) -> bool:
        return serial_key(serial) in self._revoked

    def ca_answer(self, challenge: str | None) -> dict:
        """The CA certificate (public), with a proof of the secret over the caller's nonce when it sent one."""
        fp = fingerprint(self.ca_pem)
        answer = {"ca": self.ca_pem, "fingerprint": fp}
        if challenge:
            answer["proof"] = proof(self._secret, "ca", challenge, fp)
        return answer

    def join(self, body: object) -> dict:
        """Sign a joining worker's request when it proves the secret; revoke its previous certificate."""
        if not isinstance(body, dict):
            raise BadRequest('send {"csr": PEM, "node_id": ID, "proof": HMAC}')
        csr, node_id, given = body.get("csr"), body.get("node_id"), body.get("proof")
        if not isinstance(csr, str) or not csr or len(csr) > MAX_CSR:
            raise BadRequest(f"csr: a PEM certificate signing request of at most {MAX_CSR} bytes")
        if (
            not isinstance(node_id, str)
            or not (1 <= len(node_id) <= 64)
            or not (node_id.isascii() and node_id.isalnum())
        ):
            raise BadRequest("node_id: 1 to 64 letters and digits")
        digest = pki.request_key_digest(csr.encode())
        if not proves_secret(self._secret, given, "join", node_id, digest):
            log.warning("refused a join as node %s: wrong token", node_id)
            raise Untrusted("join refused: the join token is wrong (or was rotated): `cube token` on the manager")
        cert, serial = pki.sign(self.ca, self._ca_key, csr.encode(), "worker", node_id)
        with self._lock, self.store.batch():
            old = self.store.get("members", node_id)
            if old and old.get("serial"):
                self._revoke(str(old["serial"]), node_id, "joined again")
            self.store.put("members", node_id, {"serial": serial, "role": "worker", "joined_at": time.time()})
        log.info("node %s joined (certificate %s)", node_id, serial)
        return {"cert": cert.decode(), "ca": self.ca_pem}

    def enroll(self, directory: str, node_id: str) -> Trust:
        """Make a member certificate for a worker in this process (`cube dev`) and keep it in its data directory,
        as a join would."""
        cert, key, serial = pki.issue(self.ca, self._ca_key, "worker", node_id)
        save_member(directory, self.ca, cert, key)
        with self._lock:
            self.store.put("members", node_id, {"serial": serial, "role": "worker", "joined_at": time.time()})
        trust = member_trust(directory, "manager")
        assert trust is not None
        return trust

    def revoke_node(self, node_id: str) -> bool:
        """Revoke the certificate of a node (`cube node rm`). False when the manager never signed one for it."""
        with self._lock, self.store.batch():
            member = self.store.get("members", node_id)
            if not member or not member.get("serial"):
                return False
            self._revoke(str(member["serial"]), node_id, "removed")
            self.store.delete("members", node_id)
        return True

    def _revoke(self, serial: str, node_id: str, why: str) -> None:
        """Inside a batch. Memory learns of it at once, even if the batch then fails: a certificate wrongly taken
        for revoked costs a join again; one wrongly taken for valid would let a removed node back."""
        self.store.put("revoked", serial, {"serial": serial, "node_id": node_id, "why": why, "at": time.time()})
        self._revoked.add(serial_key(serial))

    def rotate(self) -> str:
        """A new secret: new joins and the CLI need the new join token; joined nodes keep their certificates."""
        secret = new_secret()
        from cube.cluster.config import ensure_token

        ensure_token(self.directory, secret)
        self._secret = secret
        log.info("the cluster token was rotated")
        return self.join_token()


def save_member(directory: str, ca: bytes, cert: bytes, key: bytes) -> None:
    """Keep a member's CA, certificate and key in its data directory (0600 files, 0700 directory)."""
    ca_path, cert_path, key_path = member_files(directory)
    write_private(key_path, key)
    write_private(cert_path, cert)
    write_private(ca_path, ca)
