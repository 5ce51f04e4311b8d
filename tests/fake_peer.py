"""A hostile peer for tests/test_trust.py, run inside a test namespace: it advertises itself on mDNS as a Cube worker
and as a Cube manager, each both over TLS (a certificate of its own cluster CA) and over plain HTTP, answers every
request with a plausible 200 (a CA, a proof, stats, a registration) to draw out as much as a client would send, and
records every byte it receives (decrypted, for TLS) to DIR/<port>.bin. Stops on SIGTERM.

    python fake_peer.py DIR
"""

import json
import os
import signal
import socket
import ssl
import sys
import threading

from cube.cluster import discovery, pki

PORTS = {"worker-tls": 7101, "worker-http": 7102, "manager-tls": 7103, "manager-http": 7104}


def answer_for(request_line: str, ca_pem: str) -> dict:
    path = request_line.split(" ")[1] if " " in request_line else "/"
    if path.startswith("/ca"):
        return {"ca": ca_pem, "fingerprint": "0" * 64, "proof": "0" * 64}
    if path.startswith("/hello"):
        return {"proof": "0" * 64}
    if path.startswith("/stats") or path.startswith("/state"):
        return {"name": "fake", "id": "fake0001", "capacity": {"cpu": 64, "memory": 1 << 40, "disk": 1 << 40}}
    return {"ok": True, "cert": ca_pem, "version": 1, "tasks": [], "events": [], "last_event": 0}


def serve(listener: socket.socket, record: str, context, ca_pem: str) -> None:
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn, record, context, ca_pem), daemon=True).start()


def handle(conn: socket.socket, record: str, context, ca_pem: str) -> None:
    try:
        conn.settimeout(10)
        if context is not None:
            conn = context.wrap_socket(conn, server_side=True)
        buffer = b""
        while True:
            data = conn.recv(65536)
            if not data:
                return
            with open(record, "ab") as out:
                out.write(data)
            buffer += data
            while b"\r\n\r\n" in buffer:
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                buffer = buffer[length:]
                body = json.dumps(answer_for(head.split(b"\r\n")[0].decode(errors="replace"), ca_pem)).encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + body
                )
    except (OSError, ssl.SSLError) as error:
        with open(record + ".errors", "a") as out:
            out.write(f"{type(error).__name__}: {error}\n")
    finally:
        conn.close()


def main(directory: str) -> None:
    ca, ca_key = pki.make_ca("fake cluster CA")
    cert, key, _ = pki.issue(ca, ca_key, "worker", "fake0001")  # a member of another cluster, posing as either role
    pki.write_private(os.path.join(directory, "fake.pem"), cert)
    pki.write_private(os.path.join(directory, "fake.key"), key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(os.path.join(directory, "fake.pem"), os.path.join(directory, "fake.key"))
    advertisers = []
    for kind, port in PORTS.items():
        role, scheme = kind.split("-")
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", port))
        listener.listen(64)
        record = os.path.join(directory, f"{port}.bin")
        tls = context if scheme == "tls" else None
        threading.Thread(target=serve, args=(listener, record, tls, ca.decode()), daemon=True).start()
        properties = {"id": f"fake{port}", "scheme": "https" if scheme == "tls" else "http"}
        advertisers.append(discovery.Advertiser(role, f"fake-{kind}", port, properties))
    print(json.dumps({"event": "ready", "ports": PORTS}), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    for advertiser in advertisers:
        advertiser.close()


if __name__ == "__main__":
    main(sys.argv[1])
