"""How an image stream passes from one socket to the next (`cube image push`, peer fetch): in whole pieces of
CHUNK bytes, whatever sizes the source delivers them in. The Docker engine writes `docker save` in HTTP chunks of
32 KiB; passed on as they come, 107 MB was 3,300 chunked writes and TLS records on the CLI, and the manager's
server (cheroot) rebuilt each 1 MiB read from 32 pieces, copying the bytes so far at every one. In whole pieces
the manager's read of a piece is the piece itself, with no copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

CHUNK = 1 << 20


def whole(pieces: Iterable[bytes], size: int = CHUNK) -> Iterator[bytes]:
    """`pieces` regrouped into chunks of `size` bytes; only the last one may be shorter. Pieces are joined once
    (a bytearray to append to cost twice the copies)."""
    parts: list[bytes] = []
    held = 0
    for piece in pieces:
        parts.append(piece)
        held += len(piece)
        if held >= size:
            joined = b"".join(parts)
            for start in range(0, len(joined) - size + 1, size):
                yield joined[start : start + size]
            rest = joined[len(joined) - len(joined) % size :]
            parts, held = ([rest] if rest else []), len(rest)
    if held:
        yield b"".join(parts)
