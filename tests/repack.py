"""A cube.pyz made from another with its version, API level or architecture changed, for the tests of `cube upgrade`:
the zip's entries are copied with cube/__init__.py and the preamble rewritten, and a new build id (shiv unpacks each
build id once: a new version under the old id would run the old code). Seconds, where ./build.sh takes minutes, and
the code is the same as the built pyz's, which is what an upgrade test needs.

Usage: python3 tests/repack.py SRC DST VERSION [API]
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import zipfile

INIT = "site-packages/cube/__init__.py"
PREAMBLE = "site-packages/bin/cube_preamble.py"


def repack(src: str, dst: str, version: str | None = None, api: int | None = None, arch: str | None = None) -> str:
    with open(src, "rb") as handle:
        head = handle.read(512)
    shebang = head[: head.index(b"\n") + 1] if head.startswith(b"#!") else b""
    salt = f"{version}/{api}/{arch}".encode()
    with zipfile.ZipFile(src) as old, open(dst, "wb") as out:
        out.write(shebang)
        with zipfile.ZipFile(out, "w") as new:
            for info in old.infolist():
                body = old.read(info)
                if info.filename == INIT:
                    text = body.decode()
                    if version is not None:
                        text = re.sub(r'(?m)^__version__ = ".*"$', f'__version__ = "{version}"', text)
                    if api is not None:
                        text = re.sub(r"(?m)^API_VERSION = \d+$", f"API_VERSION = {api}", text)
                    body = text.encode()
                elif info.filename == PREAMBLE and arch is not None:
                    body = re.sub(rb'arch="[\w-]+"', f'arch="{arch}"'.encode(), body)
                elif info.filename == "environment.json":
                    environment = json.loads(body)
                    environment["build_id"] = hashlib.sha256(environment["build_id"].encode() + salt).hexdigest()
                    body = json.dumps(environment).encode()
                new.writestr(info, body)
    os.chmod(dst, 0o755)
    return dst


if __name__ == "__main__":
    repack(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else None)
