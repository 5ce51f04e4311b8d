"""The cluster's certificate authority (the only module that imports `cryptography`). It decides what a Cube
certificate says: the CA is made once, by the manager at its first start (EC P-256, ten years); every member gets a
certificate signed by it whose organisational unit is its role (`manager` or `worker`) and whose common name is its
node id. Peers check the role, never a host name: LAN addresses change with DHCP, and only the cluster's own CA
signs, so a certificate it signed is a member's. Keys never leave the machine that made them: a joining worker sends
a signing request, and the manager signs it.

Files are written 0600 in directories 0700, through a temporary file and a rename, and never rewritten when they
exist (a manager starting on a full disk must not need to write).
"""

from __future__ import annotations

import datetime
import os
import secrets

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cube.cluster.config import write_private
from cube.core.errors import BadRequest, CubeError


def version() -> str:
    """cryptography's version and where its `_cffi_backend` comes from (`cube doctor`)."""
    import sys

    import cryptography

    backend = getattr(sys.modules.get("_cffi_backend"), "__file__", "") or ""
    return f"{cryptography.__version__} (cffi backend: {'system' if 'dist-packages' in backend else 'bundled'})"


CA_YEARS = 10
MEMBER_YEARS = 10  # a Pi that is off for a year must still rejoin; `cube node rm` revokes sooner


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(common: str, role: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cube"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ca(common: str) -> tuple[bytes, bytes]:
    """A new cluster CA: (certificate PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common, "ca")
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # key_cert_sign, crl_sign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _cert_pem(cert), _key_pem(key)


def make_request(node_id: str) -> tuple[bytes, bytes]:
    """A new member key and its signing request: (CSR PEM, key PEM). The manager decides the name it signs."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id or "cube")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def request_key_digest(csr_pem: bytes) -> str:
    """The hex SHA-256 of a request's public key: what a joining worker's proof of the token is bound to, so a
    proof seen on the wire is worth nothing for any other key."""
    csr = _load_request(csr_pem)
    der = csr.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashes_hex(der)


def hashes_hex(data: bytes) -> str:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize().hex()


def _load_request(csr_pem: bytes) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
        valid, key = csr.is_signature_valid, csr.public_key()
    except Exception:  # noqa: BLE001 - whatever the parser makes of hostile bytes, the answer is this 400
        raise BadRequest("csr: not a PEM certificate signing request that can be read") from None
    if not valid:
        raise BadRequest("csr: its signature does not match its key")
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise BadRequest("csr: the key must be an EC P-256 key")
    return csr


def sign(ca_cert_pem: bytes, ca_key_pem: bytes, public: bytes | x509.CertificateSigningRequest, role: str, common: str):
    """A member certificate for the key of `public` (a CSR PEM), with the role and node id the manager decided.
    Returns (certificate PEM, serial as a hex string)."""
    csr = public if isinstance(public, x509.CertificateSigningRequest) else _load_request(public)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the cluster CA key is not an EC key")
    now = _now()
    serial = int.from_bytes(secrets.token_bytes(16), "big") >> 1
    usage = [x509.ExtendedKeyUsageOID.SERVER_AUTH, x509.ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common, role))
        .issuer_name(ca_cert.subject)
        .public_key(csr.public_key())
        .serial_number(serial)
        .not_valid_before(now - datetime.timedelta(hours=1))  # a Pi's clock a little behind
        .not_valid_after(now + datetime.timedelta(days=365 * MEMBER_YEARS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _cert_pem(cert), format(serial, "x")


def issue(ca_cert_pem: bytes, ca_key_pem: bytes, role: str, common: str) -> tuple[bytes, bytes, str]:
    """A key and certificate made here, for a member in this process (the manager itself, `cube dev`'s workers):
    (certificate PEM, key PEM, serial)."""
    csr_pem, key_pem = make_request(common)
    cert_pem, serial = sign(ca_cert_pem, ca_key_pem, csr_pem, role, common)
    return cert_pem, key_pem, serial


# ------------------------------------------------------------------------------------- secrets kept at rest

SEAL_KEY = "registries.key"  # 32 random bytes, 0600, beside the manager's store (never in it, never sent)


class Sealer:
    """Encrypts small secrets for the manager's store (registry passwords) with AES-GCM under a key derived by HKDF
    from a key file of the manager's own. Not from the cluster secret: that one is handed to every CLI user and
    rotates (`POST /token/rotate`), so anyone holding a copy of the store and an old token could read what it
    sealed, and each rotation would have to re-encrypt; a key file readable by root only, kept beside the store,
    needs neither. A copy of the store alone (a backup) reveals nothing."""

    def __init__(self, directory: str):
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        path = os.path.join(directory, SEAL_KEY)
        if not os.path.exists(path):
            write_private(path, secrets.token_bytes(32))
        with open(path, "rb") as handle:
            root = handle.read()
        self._key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"cube registry credentials v1").derive(
            root
        )

    def seal(self, plaintext: str, context: str) -> str:
        """`plaintext` encrypted and bound to `context` (the registry host: a sealed value moved to another record
        does not open); nonce and ciphertext as hex."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        nonce = secrets.token_bytes(12)
        return (nonce + AESGCM(self._key).encrypt(nonce, plaintext.encode(), context.encode())).hex()

    def unseal(self, sealed: str, context: str) -> str:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            data = bytes.fromhex(sealed)
            return AESGCM(self._key).decrypt(data[:12], data[12:], context.encode()).decode()
        except (ValueError, InvalidTag):
            raise CubeError(
                f"the stored secret for {context} does not open with this manager's {SEAL_KEY} (was the key file "
                f"replaced?): log in again"
            ) from None
