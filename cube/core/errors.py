"""Cube's typed errors: each carries the HTTP status it becomes, so the API turns any of them into the one
JSON error shape `{"error": ..., "status": N}` in a single place, and the client turns that shape back into the
same exception class. Catch `CubeError` to catch them all."""


class CubeError(Exception):
    status = 500

    def __init__(self, message: str = ""):
        super().__init__(message or self.__class__.__name__)
        self.message = message or self.__class__.__name__

    def to_dict(self) -> dict:
        return {"error": self.message, "status": self.status}


class BadRequest(CubeError):
    status = 400


class InvalidSpec(BadRequest):
    """A spec (task, job, restart policy, ...) that does not validate; the message names the field and why."""


class TooLarge(BadRequest):
    """A request body over the size the API takes."""

    status = 413


class Unauthorized(CubeError):
    status = 401


class Untrusted(Unauthorized):
    """A peer that could not prove it belongs to this cluster (see cluster/trust.py)."""


class Forbidden(CubeError):
    """A caller known to the API that may not do this (a dashboard action without its session's CSRF token)."""

    status = 403


class NotFound(CubeError):
    status = 404


class Conflict(CubeError):
    status = 409


class InvalidTransition(Conflict):
    """A task state change that the transition table does not allow."""


class TooManyRequests(CubeError):
    """Too many attempts from one client (dashboard sign-ins): `retry_after` seconds until the next is heard."""

    status = 429

    def __init__(self, message: str = "", retry_after: int = 60):
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(CubeError):
    """A peer (worker, manager, Docker engine) could not be reached or did not answer in time."""

    status = 503


class StorageFailed(CubeError):
    """The data directory refused a write (read-only file system, no permission, an I/O error). Nothing of the
    change was kept; the message names the path and the cause."""

    status = 503


class StorageFull(StorageFailed):
    """The data disk is full (or the quota used up): nothing of the change was kept."""

    status = 507


class RuntimeFailure(CubeError):
    """The container runtime refused or failed an operation."""

    status = 500


class ImageUnavailable(RuntimeFailure):
    """The image is not present and could not be pulled."""

    status = 424


_BY_STATUS = {
    cls.status: cls
    for cls in (
        BadRequest,
        TooLarge,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        TooManyRequests,
        Unavailable,
        StorageFull,
        ImageUnavailable,
        RuntimeFailure,
    )
}


def from_status(status: int, message: str) -> CubeError:
    """The client side of the translation: an HTTP status and message back into a typed error."""
    return _BY_STATUS.get(status, CubeError)(message)
