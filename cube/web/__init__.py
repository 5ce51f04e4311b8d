"""The dashboard's static files (index.html, app.js, app.css: plain JS and CSS, no build step, nothing fetched from
elsewhere), shipped inside the package and so inside cube.pyz. This module decides how they are served: read once
through importlib.resources, kept with their gzip form (level 9, fixed mtime: the same bytes on every start) and an
ETag of their contents, answered 304 to a browser that has them, gzipped to one that accepts it, and never framed
or sniffed. The API (cube.cluster.api) maps `PATHS` to `answer`.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
from dataclasses import dataclass
from importlib import resources

PATHS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/ui/app.css": ("app.css", "text/css; charset=utf-8"),
}
# The page loads only its own files and talks only to its own origin; no inline script or style is needed.
SECURITY = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes
    etag: str
    content_type: str


@functools.cache
def asset(path: str) -> Asset | None:
    """The file served at `path`, or None."""
    if path not in PATHS:
        return None
    name, content_type = PATHS[path]
    body = resources.files(__name__).joinpath(name).read_bytes()
    gzipped = gzip.compress(body, compresslevel=9, mtime=0)
    return Asset(body, gzipped, hashlib.sha256(body).hexdigest()[:20], content_type)


def answer(path: str, accept_encoding: str, if_none_match: str) -> tuple[int, dict, bytes]:
    """Status, headers and body for a GET of `path` (which must be one of PATHS). Browsers revalidate every time
    (no-cache): an upgraded manager serves its new files at once, and an unchanged file costs a 304."""
    found = asset(path)
    assert found is not None, path
    gzipped = "gzip" in accept_encoding.lower()
    etag = f'"{found.etag}{"-gz" if gzipped else ""}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache", "Vary": "Accept-Encoding", **SECURITY}
    if etag in [tag.strip() for tag in if_none_match.split(",")]:
        return 304, headers, b""
    headers["Content-Type"] = found.content_type
    if gzipped:
        headers["Content-Encoding"] = "gzip"
        return 200, headers, found.gzipped
    return 200, headers, found.body
