"""The HTTP APIs (bottle is imported here only) and the server that runs them (cheroot, threaded, keep-alive,
optional TLS — never bottle's single-threaded default). This module decides the wire contract: routes, the one
JSON error shape `{"error": ..., "status": N}` (every CubeError and every bottle error goes through
`_error_body`), bearer-token auth on every route but /health (and /metrics with `--metrics-open`), and how request
bodies are parsed and rejected. The routes only translate HTTP to calls on a Worker or Manager object; the logic
lives there. Each request's duration is given to the service's exporter (cube.cluster.metrics) by its route's rule.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import itertools
import json
import logging
import math
import re
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import bottle
from cheroot import wsgi

from cube import API_VERSION, __version__, web
from cube.cluster import sessions as dashboard
from cube.cluster.trust import proof
from cube.core.errors import BadRequest, Conflict, CubeError, NotFound, TooLarge, TooManyRequests, Unauthorized
from cube.core.model import Assignment, State
from cube.core.spec import MAX_WHOLE, shown, text

log = logging.getLogger("cube.api")
bottle.BaseRequest.MEMFILE_MAX = 4 * 1024 * 1024
# What a request body may be (README, Limits). The largest valid one, a job with every field at its limit, is
# under 300 KiB; a task list answer stays proportionate to what was submitted.
MAX_BODY = 1 << 20
MAX_DEPTH = 32  # nesting of a JSON body; a task spec needs 4
MAX_DIGITS = 18  # of a JSON integer: Python refuses to read 4,300+ (a ValueError), and stores keep 64 bits
KEEPALIVE_LIMIT = 256  # idle keep-alive connections kept open, and the listen backlog (see Server)


def _error_body(status: int, message: str) -> str:
    return json.dumps({"error": message, "status": status})


def _json_response(data, status: int = 200) -> bottle.HTTPResponse:
    return bottle.HTTPResponse(json.dumps(data), status=status, headers={"Content-Type": "application/json"})


def _errors_plugin(callback):
    """Turns every CubeError raised by a route into the JSON error shape (invalid specs are BadRequests)."""

    def wrapper(*args, **kwargs):
        try:
            result = callback(*args, **kwargs)
        except bottle.HTTPResponse:
            raise
        except CubeError as error:
            response = _json_response(error.to_dict(), error.status)
            if isinstance(error, TooManyRequests):
                response.set_header("Retry-After", str(error.retry_after))
            return response
        except Exception:
            log.exception("internal error in %s %s", bottle.request.method, bottle.request.path)
            return _json_response({"error": "internal error: see the server's log", "status": 500}, 500)
        if isinstance(result, bottle.HTTPResponse) or not isinstance(result, (dict, list)):
            return result
        return _json_response(result)

    return wrapper


PUBLIC = ("/health", "/hello", "/ca", "/join")  # routes anyone may call: they prove things, or are harmless
SIGN_IN = ("POST", "/session")  # the dashboard's sign-in checks the token itself (cube.cluster.sessions)


class Access:
    """Who may call an API. `secret()`: the cluster secret, accepted as a bearer token (the CLI; every caller on an
    insecure cluster); None for an open API (tests). `member_role`: the role a client certificate must have (mutual
    TLS; the TLS layer already checked it chains to the cluster CA), allowed `member_routes` only when given, and not
    when `revoked(serial)`. `sessions`: the dashboard's sign-ins (a browser's cookie stands for the secret)."""

    def __init__(
        self,
        secret=None,
        member_role: str | None = None,
        member_routes=None,
        revoked=None,
        sessions: dashboard.Sessions | None = None,
    ):
        self.secret = secret if callable(secret) or secret is None else (lambda: secret)
        self.member_role, self.member_routes, self.revoked = member_role, member_routes, revoked
        self.sessions = sessions

    def check(self, environ: dict, method: str, path: str) -> None:
        if path in PUBLIC or (self.secret is None and self.member_role is None):
            return
        if self.sessions is not None and (path in web.PATHS or (method, path) == SIGN_IN):
            return
        role = environ.get("SSL_CLIENT_S_DN_OU")
        if role and role == self.member_role:
            if self.revoked is not None and self.revoked(str(environ.get("SSL_CLIENT_M_SERIAL", ""))):
                raise Unauthorized(
                    f"node {environ.get('SSL_CLIENT_S_DN_CN', '?')} was removed from the cluster: join it again"
                )
            if self.member_routes is None or (method, path) in self.member_routes:
                return
        secret = self.secret() if self.secret is not None else None
        if secret:
            given = environ.get("HTTP_AUTHORIZATION", "").encode()
            if hmac.compare_digest(given, f"Bearer {secret}".encode()):
                return
            if self.sessions is not None and self.sessions.admits(environ, method, secret):
                return
        raise Unauthorized(
            "missing or wrong cluster token: set CUBE_TOKEN or pass --token (`cube token` on the manager prints "
            "it); over HTTP send 'Authorization: Bearer <token>'"
        )

    def hello(self, challenge: str, role: str) -> dict:
        """An insecure cluster's challenge: prove the secret over the caller's nonce and our role."""
        secret = self.secret() if self.secret is not None else None
        if not secret or not challenge or len(challenge) > 128:
            raise BadRequest("nonce: send a nonce of 1 to 128 characters")
        return {"proof": proof(secret, "hello", challenge, role)}


def _auth_plugin(access: Access, public: tuple[str, ...] = ()):
    def plugin(callback):
        def wrapper(*args, **kwargs):
            try:
                if bottle.request.path not in public:
                    access.check(bottle.request.environ, bottle.request.method, bottle.request.path)
            except Unauthorized as error:
                return _json_response(error.to_dict(), 401)
            return callback(*args, **kwargs)

        return wrapper

    return plugin


def _access(token, sessions: bool = False) -> Access:
    """`token` as an Access; a bare token also takes dashboard sessions when `sessions` (the manager's API)."""
    if isinstance(token, Access):
        return token
    return Access(token, sessions=dashboard.Sessions() if sessions else None)


class _Timing:
    """Gives the exporter each request's duration (the first plugin installed: it wraps the others, auth included),
    labelled by the route's rule, known when the route is made: `/tasks/<ref>`, never the ids of a path."""

    api = 2

    def __init__(self, exporter):
        self.exporter = exporter

    def apply(self, callback, route):
        rule, method = route.rule, route.method

        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return callback(*args, **kwargs)
            finally:
                self.exporter.request(method, rule, time.perf_counter() - started)

        return wrapper


def _new_app(access: Access, role: str, exporter=None) -> bottle.Bottle:
    """`exporter` (cube.cluster.metrics): serves GET /metrics and is told how long each request took."""
    app = bottle.Bottle()
    app.config["catchall"] = False
    if exporter is not None:
        app.install(_Timing(exporter))
    app.install(_errors_plugin)
    app.install(_auth_plugin(access, ("/metrics",) if exporter is not None and exporter.open else ()))

    @app.get("/hello")
    def hello():
        return access.hello(bottle.request.query.get("nonce", ""), role)

    if exporter is not None:

        @app.get("/metrics")
        def metrics():
            body, content_type = exporter.exposition()
            return bottle.HTTPResponse(body, headers={"Content-Type": content_type})

    def default_error(res: bottle.HTTPError):
        res.content_type = "application/json"
        message = res.body if isinstance(res.body, str) and res.body else res.status_line
        if res.status_code == 404:
            message = f"no such route: {bottle.request.method} {bottle.request.path}"
        elif res.status_code == 405:
            message = f"method {bottle.request.method} not allowed on {bottle.request.path}"
        return _error_body(res.status_code, message)

    app.default_error_handler = default_error
    return app


def read_json() -> object:
    """The request body as JSON, or a 400 that says what is wrong with it: at most MAX_BODY bytes, MAX_DEPTH
    levels deep, numbers of at most MAX_DIGITS digits and finite, strings without lone surrogates. Each field's
    own rules are the spec's (cube.core.spec)."""
    if bottle.request.content_length > MAX_BODY:
        raise TooLarge(f"request body is {bottle.request.content_length:,} bytes: at most 1 MiB is accepted")
    raw = bottle.request.body.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise TooLarge("request body is over 1 MiB: at most 1 MiB is accepted")
    if not raw:
        raise BadRequest("request body is empty: send a JSON object")
    try:
        data = json.loads(raw, parse_int=_json_int, parse_float=_json_float, parse_constant=_json_constant)
    except RecursionError:
        raise BadRequest(f"request body is nested too deeply: at most {MAX_DEPTH} levels") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadRequest(f"request body is not valid JSON: {error}") from None
    _check_tree(data)
    return data


class _Refused:
    """A number of the body that Cube does not take, kept in place while parsing so that `_check_tree` can name
    the field that holds it."""

    def __init__(self, what: str):
        self.what = what


def _json_int(digits: str) -> int | _Refused:
    if len(digits.lstrip("-")) > MAX_DIGITS:
        return _Refused(f"a number of {len(digits):,} digits (at most {MAX_DIGITS} are accepted)")
    return int(digits)


def _json_float(literal: str) -> float | _Refused:
    value = float(literal)
    return value if math.isfinite(value) else _Refused(f"a number too large for a float ({shown(literal)})")


def _json_constant(name: str) -> _Refused:
    return _Refused(f"{name} (JSON has no NaN or Infinity: send a number)")


_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _check_tree(data) -> None:
    """Depth, numbers and strings of a parsed body, without recursion (1 MiB holds up to ~500,000 values); an
    error names the field."""
    stack: list[tuple[object, tuple]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        problem = None
        if isinstance(value, str):
            if _SURROGATE.search(value):
                problem = f"a lone surrogate ({shown(value)}): send UTF-8 text"
        elif isinstance(value, _Refused):
            problem = value.what
        elif isinstance(value, dict):
            if len(path) >= MAX_DEPTH:
                raise BadRequest(f"request body is nested too deeply at {_field(path)}: at most {MAX_DEPTH} levels")
            for key, item in value.items():
                stack.append((key, path))
                stack.append((item, (*path, key)))
        elif isinstance(value, list):
            if len(path) >= MAX_DEPTH:
                raise BadRequest(f"request body is nested too deeply at {_field(path)}: at most {MAX_DEPTH} levels")
            stack.extend((item, (*path, index)) for index, item in enumerate(value))
        if problem:
            raise BadRequest(f"{'request body' if not path else _field(path)} holds {problem}")


def _field(path: tuple) -> str:
    """A field's path as the spec's errors write it: task.env.NAME, ports[0]."""
    text = ""
    for key in path:
        text += f"[{key}]" if isinstance(key, int) else f".{key}" if text else str(key)
    return shown(text or "(the body)").strip("'")


_WHOLE_RE = re.compile(r"[+-]?[0-9]{1,18}")
_REAL_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")


def query_number(name: str, default, kind=float, low: float = -MAX_WHOLE, high: float = MAX_WHOLE):
    """A number in the query, from `low` to `high`; a whole one if `kind` is int. NaN and infinities are refused
    (a long poll's wait of NaN raised inside the condition's wait)."""
    raw = bottle.request.query.get(name)
    if raw in (None, ""):
        return default
    if len(raw) > 40 or not (_WHOLE_RE if kind is int else _REAL_RE).fullmatch(raw):
        whole = "whole " if kind is int else ""
        raise BadRequest(f"query parameter {name} must be a {whole}number, not {shown(raw)}")
    value = kind(raw)
    if not low <= value <= high:
        raise BadRequest(f"query parameter {name} must be from {low:g} to {high:g}, not {shown(raw)}")
    return value


MAX_PAGE = 10000
STATES = tuple(state.value for state in State)


def _cursor(raw: str | None) -> tuple | None:
    """The key a `cursor` stands for (the last task of the page before): [created_at, name, id]."""
    if not raw:
        return None
    try:
        created_at, name, task_id = json.loads(base64.urlsafe_b64decode(raw.encode()))
        if isinstance(created_at, (int, float)) and isinstance(name, str) and isinstance(task_id, str):
            return (created_at, name, task_id)
    except (ValueError, TypeError, UnicodeError, binascii.Error):
        pass
    raise BadRequest("query parameter cursor is not one this manager gave: take it from Cube-Next-Cursor")


def query_count(name: str, default: int) -> int:
    """A query parameter that counts things: a whole number of at least 1."""
    value = query_number(name, default, int, 1)
    return int(value)


def query_flag(name: str) -> bool:
    return bottle.request.query.get(name, "").lower() in ("1", "true", "yes")


def query_choice(name: str) -> bool | None:
    """A true/false query parameter that may be left out (None)."""
    value = bottle.request.query.get(name)
    if value is None or value == "":
        return None
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise BadRequest(f"query parameter {name} must be true or false, not {shown(value)}")


def _stream_logs(chunks) -> bottle.HTTPResponse:
    """A streamed text answer. Its first chunk is read here, in the route: a peer that cannot be reached (or
    answers an error) is then the route's typed error. Once the status is sent, a failure can only end the stream:
    it ends with a line that says why, instead of an exception in the server (which answered 500 with an empty
    body when the first chunk was empty, and broke the connection later on)."""
    chunks = iter(chunks)
    first = b""
    for first in chunks:
        if first:
            break
    return bottle.HTTPResponse(
        _rest_of_stream(first, chunks), status=200, headers={"Content-Type": "text/plain; charset=utf-8"}
    )


def _rest_of_stream(first: bytes, chunks: Iterator[bytes]) -> Iterator[bytes]:
    try:
        if first:
            yield first
        yield from chunks
    except Exception as error:  # noqa: BLE001 - the status is sent: nothing but the body can say it
        message = error.message if isinstance(error, CubeError) else "internal error: see the server's log"
        if not isinstance(error, CubeError):
            log.exception("a log stream failed after its status was sent")
        yield f"\n[cube: the log stream broke off: {message}]\n".encode()
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def _upload(what: str = "the image", how: str = "cube image push") -> Callable[[int], bytes]:
    """The raw request body of an upload (an image, a pyz), to read as it comes (never bottle's whole-body buffer).
    Uploads are chunked; cheroot's backstop on chunked bodies (max_request_body_size, 4 MiB) is lifted for this
    request alone, which only a caller the auth plugin let in reaches."""
    if not bottle.request.chunked:
        raise BadRequest(f"send {what} as a chunked body (Transfer-Encoding: chunked), as `{how}` does")
    stream = bottle.request.environ["wsgi.input"]
    if hasattr(stream, "maxlen"):
        stream.maxlen = 0
    return stream.read


def _stream_bytes(chunks, headers: dict | None = None) -> bottle.HTTPResponse:
    """A streamed binary answer (an image). The first chunk is read in the route, so that a missing image is the
    route's typed error; a failure after that breaks the connection off, which the reader sees as a cut stream
    (a tar cut short, which `docker load` refuses whole)."""
    chunks = iter(chunks)
    first = next(chunks, b"")
    return bottle.HTTPResponse(
        itertools.chain([first], chunks), status=200, headers={"Content-Type": "application/x-tar", **(headers or {})}
    )


def _image_routes_worker(app: bottle.Bottle, worker) -> None:
    """The worker's image routes (cube.worker.images): check and tag, load a pushed image, export one."""

    @app.post("/images/check")
    def check_image():
        body = read_json()
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise BadRequest('send {"id": "sha256:...", "tags": [...]}')
        return worker.images.check(body["id"], [text(t, "tags", 255) for t in body.get("tags") or ()])

    @app.post("/images")
    def load_image():
        read = _upload()
        return worker.images.load(iter(lambda: read(1 << 20), b""))

    @app.get("/images/export")
    def export_image():
        image = text(bottle.request.query.get("image", ""), "image", 255)
        return _stream_bytes(worker.images.export(image))


def _image_routes_manager(app: bottle.Bottle, manager, links) -> None:
    """The manager's image routes (cube.cluster.images): plan and tee a push, list, relay a peer fetch."""
    from cube.cluster import images

    @app.post("/images/push")
    def plan_push():
        return images.plan(manager, links, read_json())

    @app.post("/images")
    def push_image():
        names = [text(n, "node", 255) for n in bottle.request.query.getall("node")]
        return images.tee(manager, links, names, _upload())

    @app.get("/images")
    def list_images():
        return manager.images.listing()

    @app.get("/images/fetch")
    def fetch_image():
        image = text(bottle.request.query.get("image", ""), "image", 255)
        query = bottle.request.query
        source, chunks = images.fetch(manager, links, image, query.get("node", ""), query.getall("avoid"))
        return _stream_bytes(chunks, {images.SOURCE_HEADER: source})


_SHA256_RE = re.compile(r"[0-9a-f]{64}")
MAX_PYZ_CHUNKS = 128  # MiB of a refused pyz read to its end (cube.ops.upgrade.MAX_PYZ)


def _upgrade_route_worker(app: bottle.Bottle, upgrader) -> None:
    """`cube upgrade` on a worker: the manager pushes the new pyz (cube.cluster.upgrade.push)."""

    @app.post("/upgrade")
    def upgrade():
        read = _upload("the pyz", "cube upgrade")
        try:
            if upgrader is None:
                raise Conflict("this worker runs inside its manager's process (cube dev): it cannot replace itself")
            sha256 = bottle.request.query.get("sha256", "")
            if not _SHA256_RE.fullmatch(sha256):
                raise BadRequest(f"query parameter sha256 must be 64 hex digits, not {shown(sha256)}")
            version = text(bottle.request.query.get("version", ""), "version", 64)
            if not version:
                raise BadRequest("query parameter version is missing: the version of the pyz sent")
            return upgrader.apply(read, sha256, version)
        except CubeError:
            # The manager sees the refusal, not a broken pipe: read the rest of the pyz (bounded) first.
            for _ in range(MAX_PYZ_CHUNKS):
                if not read(1 << 20):
                    break
            raise


def _upgrade_routes_manager(app: bottle.Bottle, upgrades, shelf) -> None:
    """`cube upgrade` on the manager: the pyz files (one per architecture), the rollout, its progress."""

    @app.put("/upgrade/pyz/<arch>")
    def put_pyz(arch):
        running = upgrades.current()
        keep = running["sha256"].get(arch) if running and running["status"] == "running" else None
        return shelf.put(arch, _upload("the pyz", "cube upgrade"), keep)

    @app.get("/upgrade/pyz")
    def held_pyz():
        return shelf.held()

    @app.post("/upgrade")
    def start_upgrade():
        return upgrades.begin(read_json())

    @app.get("/upgrade")
    def upgrade_status():
        return upgrades.status()


def _node_address(body) -> str:
    """The address of a worker to admit: http(s)://HOST[:PORT], or HOST[:PORT]. Checked here so that a bad one is
    a 400 naming the field (a port of 99999 raised inside the HTTP client: a 500)."""
    if not isinstance(body, dict) or not isinstance(body.get("address"), str):
        raise BadRequest('send {"address": "https://HOST:PORT"}')
    address = text(body["address"], "address", 255)
    try:
        parts = urlsplit(address if "://" in address else f"http://{address}")
        port = parts.port
    except ValueError as error:
        raise BadRequest(f"address {shown(address)} is not a URL such as https://HOST:PORT ({error})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in address):
        raise BadRequest(f"address must look like https://HOST:PORT, not {shown(address)}")
    if port == 0:
        raise BadRequest(f"address port must be from 1 to 65535, not {shown(address)}")
    if parts.path.strip("/") or parts.query or parts.fragment or parts.username or parts.password:
        raise BadRequest(f"address must be https://HOST:PORT alone (no path, query or user), not {shown(address)}")
    return address


def worker_app(worker, token, upgrader=None, exporter=None) -> bottle.Bottle:
    """The worker's API: the book's routes plus health, logs, state (the manager's long poll) and events, and with
    an `exporter` its metrics. `token`: an `Access`, or the bearer token (None: open). `upgrader`: how the worker
    replaces its pyz (cube.ops.upgrade.SelfUpgrade; None: it runs from sources and says so)."""
    app = _new_app(_access(token), "worker", exporter)
    _upgrade_route_worker(app, upgrader)

    @app.get("/health")
    def health():
        return {"status": "ok", "role": "worker", "name": worker.name, "version": __version__, "api": API_VERSION}

    @app.post("/tasks")
    def post_task():
        body = read_json()
        if not isinstance(body, dict):
            raise BadRequest("an assignment must be a JSON object with id, spec and generation")
        # The credentials for the task's registry (the manager's, see cube.manager.registries) go to memory only,
        # never into the assignment the worker keeps in its store.
        worker.credentials.remember(body.pop("registry_auth", None))
        # A stack's secrets and configs: written to the worker's private directory, never into its store.
        contents = body.pop("files", None)
        assignment = Assignment.from_dict(body)
        worker.files.write(assignment, contents)
        task, created = worker.accept(assignment)
        return _json_response(task.to_dict(), 201 if created else 200)

    @app.get("/tasks")
    def list_tasks():
        return [t.to_dict() for t in worker.assignments()]

    @app.get("/tasks/<task_id>")
    def get_task(task_id):
        return worker.detail(task_id)

    @app.delete("/tasks/<task_id>")
    def delete_task(task_id):
        generation = query_number("generation", None, int, 0)
        worker.stop_task(task_id, None if generation is None else int(generation))
        return bottle.HTTPResponse(status=204)

    @app.post("/tasks/<task_id>/restart")
    def restart_task(task_id):
        body = read_json() if bottle.request.content_length else {}
        reason = body.get("reason", "restart requested") if isinstance(body, dict) else "restart requested"
        return worker.restart_task(task_id, text(reason, "reason", 1000)).to_dict()

    @app.get("/tasks/<task_id>/logs")
    def logs(task_id):
        tail = query_number("tail", None, int, 0)
        return _stream_logs(worker.logs(task_id, tail=tail, follow=query_flag("follow")))

    @app.get("/stats")
    def stats():
        return worker.stats()

    @app.delete("/volumes/<name>")
    def remove_volume(name):
        worker.remove_volume(name)
        return bottle.HTTPResponse(status=204)

    @app.put("/network")
    def put_network():
        return worker.update_network(read_json())

    _image_routes_worker(app, worker)

    @app.get("/state")
    def state():
        version = query_number("version", None, int)
        wait = query_number("wait", 0.0, float, -3600, 3600)
        return worker.state(version=version, wait=max(wait, 0.0), events_since=query_number("events_since", -1, int))

    @app.get("/events")
    def events():
        since = query_number("since", 0, int)
        limit = query_count("limit", 1000)
        return [e.to_dict() for e in worker.store.events(since=since, limit=limit)]

    return app


def manager_app(
    manager, membership, links, token, authority=None, registries=None, upgrades=None, shelf=None, exporter=None
) -> bottle.Bottle:
    """The manager's API: the book's routes plus jobs, events, logs (proxied from the worker), nodes, health, and
    with an `authority` (TLS) the CA, joins, token rotation and node removal; with an `exporter`, its metrics.
    `token`: an `Access`, or the bearer token (None: open). `upgrades` and `shelf`: `cube upgrade`
    (cube.manager.upgrade, cube.cluster.upgrade)."""
    access = _access(token, sessions=True)
    app = _new_app(access, "manager", exporter)
    _dashboard_routes(app, access)
    if upgrades is not None and shelf is not None:
        _upgrade_routes_manager(app, upgrades, shelf)

    @app.get("/ca")
    def get_ca():
        if authority is None:
            raise NotFound("this manager runs --insecure: it has no cluster CA")
        challenge = bottle.request.query.get("nonce") or None
        if challenge is not None and len(challenge) > 128:
            raise BadRequest("nonce: at most 128 characters")
        return authority.ca_answer(challenge)

    @app.post("/join")
    def join():
        if authority is None:
            raise NotFound("this manager runs --insecure: workers join with the token alone")
        return authority.join(read_json())

    @app.post("/token/rotate")
    def rotate_token():
        if authority is None:
            raise NotFound("this manager runs --insecure: restart it with a new --token instead")
        return {"token": authority.rotate()}

    @app.get("/token")
    def get_token():
        if authority is None:
            raise NotFound("this manager runs --insecure: its token is the one you used")
        return {"token": authority.join_token()}

    @app.delete("/nodes/<name>")
    def remove_node(name):
        node = manager.remove_node(name)
        revoked = authority.revoke_node(node.labels.get("node_id", "")) if authority is not None else False
        return {"removed": node.name, "revoked": revoked}

    @app.get("/health")
    def health():
        return {"status": "ok", "role": "manager", "version": __version__, "api": API_VERSION}

    @app.post("/tasks")
    def post_task():
        task, created = manager.submit_task(read_json())
        return _json_response(task.to_dict(), 201 if created else 200)

    @app.get("/tasks")
    def list_tasks():
        """Filters: job, state, node, finished (false: only tasks not over, as `cube status` lists them); `limit`
        pages the list, and `Cube-Next-Cursor` (and a `Link` rel=next) gives the `cursor` of the next page when
        there is one."""
        query = bottle.request.query
        state = query.get("state") or None
        if state is not None and state not in STATES:
            raise BadRequest(f"query parameter state must be one of {', '.join(STATES)}, not {shown(state)}")
        limit = query_number("limit", None, int, 1, MAX_PAGE)
        views, last = manager.task_page(
            job=query.get("job") or None,
            state=state,
            node=query.get("node") or None,
            limit=limit,
            after=_cursor(query.get("cursor")),
            finished=query_choice("finished"),
        )
        response = _json_response(views)
        if last is not None:
            cursor = base64.urlsafe_b64encode(json.dumps(list(last)).encode()).decode()
            response.set_header("Cube-Next-Cursor", cursor)
            params = {k: v for k, v in query.items() if k != "cursor"}
            response.set_header("Link", f"</tasks?{urllib.parse.urlencode({**params, 'cursor': cursor})}>; rel=next")
        return response

    @app.get("/tasks/<ref>")
    def get_task(ref):
        return manager.task_detail(manager.find_task(ref).id)

    @app.post("/tasks/<ref>/restart")
    def restart_task(ref):
        return manager.task_detail(manager.restart_task(manager.find_task(ref).id).id)

    @app.get("/tasks/<ref>/explain")
    def explain_task(ref):
        return manager.explain_task(ref)

    @app.get("/jobs/<name>/explain")
    def explain_job(name):
        return manager.explain_job(name)

    @app.delete("/tasks/<ref>")
    def delete_task(ref):
        manager.stop_task(manager.find_task(ref).id)
        return bottle.HTTPResponse(status=204)

    @app.get("/tasks/<ref>/logs")
    def task_logs(ref):
        task = manager.find_task(ref)
        node = manager.node(task.node) if task.node else None
        if node is None:
            raise NotFound(f"task {task.id} has not been placed on a node yet ({task.reason or task.state.value})")
        params = {"tail": query_number("tail", None, int, 0), "follow": "1" if query_flag("follow") else None}
        client = links.client(node.address)
        return _stream_logs(
            client.stream(f"/tasks/{task.id}/logs", params=params, timeout=None if query_flag("follow") else 30)
        )

    @app.post("/jobs")
    def post_job():
        job, outcome = manager.submit_job(read_json())
        return _json_response(
            {**manager.job_detail(job.name), "outcome": outcome}, 201 if outcome == "created" else 200
        )

    @app.get("/jobs")
    def list_jobs():
        return [manager.job_detail(name) for name in manager.job_names()]

    @app.get("/jobs/<name>")
    def get_job(name):
        return manager.job_detail(name)

    @app.delete("/jobs/<name>")
    def delete_job(name):
        manager.stop_job(name)
        return bottle.HTTPResponse(status=204)

    @app.post("/jobs/<name>/scale")
    def scale_job(name):
        body = read_json()
        if not isinstance(body, dict) or "count" not in body:
            raise BadRequest('send {"count": N}')
        manager.scale_job(name, body["count"])
        return manager.job_detail(name)

    @app.post("/stacks/<name>")
    def deploy_stack(name):
        return manager.deploy_stack(name, read_json())

    @app.get("/stacks")
    def list_stacks():
        return manager.stacks()

    @app.get("/stacks/<name>")
    def get_stack(name):
        return manager.stack(name)

    @app.delete("/stacks/<name>")
    def remove_stack(name):
        return manager.remove_stack(name)

    @app.get("/jobs/<name>/history")
    def job_history(name):
        return manager.history(name)

    @app.post("/jobs/<name>/rollback")
    def rollback_job(name):
        body = read_json()
        if not isinstance(body, dict):
            raise BadRequest('send {} or {"version": N}')
        to = body.get("version")
        if to is not None and (isinstance(to, bool) or not isinstance(to, int) or to < 1):
            raise BadRequest(f"version must be a whole number from 1, not {to!r}")
        job, target = manager.rollback(name, to)
        return {**manager.job_detail(name), "rolled_back_to": target}

    @app.get("/nodes")
    def list_nodes():
        return manager.list_nodes()

    @app.post("/nodes/<name>/drain")
    def drain_node(name):
        body = read_json() if bottle.request.content_length else {}
        if not isinstance(body, dict) or not body.keys() <= {"deadline", "force"}:
            raise BadRequest('send {"deadline": seconds or null, "force": false} (both optional)')
        node = manager.drain_node(name, body.get("deadline"), body.get("force", False))
        return manager.node_view(node.name)

    @app.post("/nodes/<name>/eligible")
    def eligible_node(name):
        return manager.node_view(manager.make_eligible(name).name)

    @app.get("/volumes")
    def list_volumes():
        return manager.list_volumes()

    @app.delete("/volumes/<name>")
    def remove_volume(name):
        return manager.remove_volume(name)

    if registries is not None:
        _registry_routes(app, registries)
    _image_routes_manager(app, manager, links)

    @app.post("/nodes")
    def add_node():
        return _json_response(membership.add(_node_address(read_json())).to_dict(), 201)

    @app.get("/events")
    def events():
        since = query_number("since", 0, int)
        tail = query_number("tail", None, int, 0)
        if tail is not None:  # the newest `tail` events
            since = max(since, manager.last_event_id() - tail)
        limit = query_count("limit", 1000)
        wait = query_number("wait", 0.0, float, -3600, 3600)
        task_id = bottle.request.query.get("task") or None
        job, node = bottle.request.query.get("job") or None, bottle.request.query.get("node") or None
        if job is not None or node is not None:  # a filtered scan: the answer says where the next one starts
            found, reached = manager.events_of(since, limit, job, node)
            response = _json_response([e.to_dict() for e in found])
            response.set_header("Cube-Next-Since", str(reached))
            return response
        found = manager.events(since=since, limit=limit, task_id=task_id)
        if not found and wait > 0:
            manager.wait_changed(min(wait, 30.0))
            found = manager.events(since=since, limit=limit, task_id=task_id)
        return [e.to_dict() for e in found]

    return app


HANDSHAKE_TIMEOUT = 5.0  # seconds: cheroot shakes hands on its accepting thread, so a silent peer stalls it that long


def _adapter(context: ssl.SSLContext):
    """cheroot's TLS adapter around our context, with a short handshake timeout."""
    from cheroot.ssl.builtin import BuiltinSSLAdapter

    class Adapter(BuiltinSSLAdapter):
        def __init__(self):  # the context is ours: nothing to load from files
            self.certificate = self.private_key = self.certificate_chain = self.ciphers = None
            self.private_key_password = None
            self._server_env: dict = {}
            self.context = context

        def wrap(self, sock):
            sock.settimeout(HANDSHAKE_TIMEOUT)
            return super().wrap(sock)

    return Adapter()


class Server:
    """A cheroot server for one WSGI app on a background thread. Port 0 picks a free port (see `.port`)."""

    def __init__(
        self,
        app: Callable,
        host: str = "0.0.0.0",
        port: int = 0,
        threads: int = 16,
        tls: ssl.SSLContext | None = None,
    ):
        # cheroot's defaults (a listen backlog of 5, at most 10 idle keep-alive connections) close the connections
        # of the 11th client on and then drop its reconnections' SYNs, which clients resend only after 1, 3, 7 s:
        # with 50 clients, p99 was over a second (BENCHMARKS.md, api). Keep-alive connections are cheap here.
        self._server = wsgi.Server(
            (host, port),
            app,
            numthreads=threads,
            server_name=f"cube/{__version__}",
            timeout=60,
            request_queue_size=KEEPALIVE_LIMIT,
        )
        self._server.keep_alive_conn_limit = KEEPALIVE_LIMIT
        # A backstop for bodies without a Content-Length (chunked), which bottle would read whole, to memory and
        # then to disk: cheroot refuses them past this. read_json answers bodies over MAX_BODY itself.
        self._server.max_request_body_size = bottle.BaseRequest.MEMFILE_MAX
        if tls is not None:
            self._server.ssl_adapter = _adapter(tls)
        self._prepare()
        self.host = host
        self.port = self._server.bind_addr[1]
        self.scheme = "https" if tls is not None else "http"
        self._thread = threading.Thread(target=self._server.serve, name="cube-http", daemon=True)

    def _prepare(self) -> None:
        """Bind and start cheroot's worker threads from a daemon thread: threads inherit that flag, and a server
        someone forgot to stop must not keep its process alive at exit (a test run once hung so after its tests)."""
        failure: list[BaseException] = []

        def prepare() -> None:
            try:
                self._server.prepare()
            except BaseException as error:  # noqa: BLE001 - raised again in the caller's thread
                failure.append(error)

        thread = threading.Thread(target=prepare, name="cube-http-prepare", daemon=True)
        thread.start()
        thread.join()
        if failure:
            raise failure[0]

    def start(self) -> "Server":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.stop()
        self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{self.scheme}://{host}:{self.port}"


def _registry_routes(app: bottle.Bottle, registries) -> None:
    """Registry credentials (cube.manager.registries): a password goes in, and no answer ever carries one."""

    @app.post("/registries")
    def registry_login():
        return _json_response(registries.login(read_json()), 201)

    @app.get("/registries")
    def registry_list():
        return registries.list()

    @app.delete("/registries/<host>")
    def registry_logout(host):
        return registries.logout(host)


def _dashboard_routes(app: bottle.Bottle, access: Access) -> None:
    """The dashboard (cube.web): its files, public, and its sign-in and sign-out (cube.cluster.sessions). Its data
    comes from the routes above, with the session's cookie in place of the bearer token."""

    @app.get("/")
    @app.get("/ui/<name>")
    def dashboard_file(name: str = ""):
        path = bottle.request.path
        if path not in web.PATHS:
            raise NotFound(f"no such file: {shown(path)}")
        status, headers, body = web.answer(
            path, bottle.request.get_header("Accept-Encoding", ""), bottle.request.get_header("If-None-Match", "")
        )
        return bottle.HTTPResponse(body, status=status, headers=headers)

    def sessions() -> tuple[dashboard.Sessions, str]:
        secret = access.secret() if access.secret is not None else None
        if access.sessions is None or not secret:
            raise NotFound("this API takes no sign-in: it is open, or has no cluster token")
        return access.sessions, secret

    # The client's address as the connection gives it: X-Forwarded-For is anyone's to write (bottle's remote_addr
    # trusts it), and would reset the sign-in limit at every attempt. Likewise TLS is the connection's, not a header's.
    def tls() -> bool:
        return bottle.request.environ.get("wsgi.url_scheme") == "https"

    @app.post("/session")
    def sign_in():
        table, secret = sessions()
        if bottle.request.content_type.startswith("application/x-www-form-urlencoded"):
            given = bottle.request.forms.get("token")
        else:
            body = read_json()
            given = body.get("token") if isinstance(body, dict) else None
        if not isinstance(given, str):
            raise BadRequest('send {"token": "..."}: the cluster token, which `cube token` prints on the manager')
        session_id, session = table.open(given, secret, bottle.request.environ.get("REMOTE_ADDR", ""))
        response = _json_response({"csrf": session.csrf, "expires_in": dashboard.LIFETIME, "version": __version__})
        response.set_header("Set-Cookie", dashboard.set_cookie(session_id, tls()))
        response.set_header("Cache-Control", "no-store")
        return response

    @app.get("/session")
    def get_session():
        """Who is asking: a signed-in browser gets its CSRF token again (after a reload); a bearer or an open API
        gets none, and needs none."""
        found = None
        if access.sessions is not None and access.secret is not None and access.secret():
            found = access.sessions.find(bottle.request.environ, access.secret())
        response = _json_response({"csrf": found.csrf if found else None, "version": __version__})
        response.set_header("Cache-Control", "no-store")
        return response

    @app.delete("/session")
    def sign_out():
        if access.sessions is not None:
            access.sessions.close(bottle.request.environ)
        return bottle.HTTPResponse(status=204, headers={"Set-Cookie": dashboard.clear_cookie(tls())})
