"""The dashboard's server side, in-process (WSGI, no socket): its files (public, typed, cached by ETag, gzipped on
request, small), the sign-in with the cluster token (cookie flags, the session's CSRF token on every action,
sign-out, expiry, a rotated token, the per-address limit on wrong tokens) and the bearer token still working beside
it. The browser's side is tests/test_dashboard_browser.py."""

import gzip

import pytest
from test_api import TOKEN, call, error_of

from cube import web
from cube.cluster.api import Access, manager_app
from cube.cluster.links import Links
from cube.cluster.sessions import FAILURES, LIFETIME, WINDOW, Sessions
from cube.cluster.trust import join_token
from cube.manager.manager import Manager
from cube.store import MemoryStore

JOB = {"name": "web", "count": 1, "task": {"image": "cube-busybox:latest", "command": ["sleep", "300"]}}


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Dash:
    """A manager's API with a dashboard session table on a clock the test moves; `secret` can be rotated."""

    def __init__(self):
        self.clock = Clock()
        self.secret = TOKEN
        self.manager = Manager(MemoryStore())
        access = Access(lambda: self.secret, sessions=Sessions(self.clock))
        self.app = manager_app(self.manager, None, Links(TOKEN), access)

    def sign_in(self, token=TOKEN, address="192.0.2.7", **environ):
        return call(
            self.app, "POST", "/session", {"token": token}, token=None, environ={"REMOTE_ADDR": address, **environ}
        )

    def session(self):
        """A signed-in browser: its cookie header and CSRF token."""
        answer = self.sign_in()
        assert answer.status == 200, answer.body
        cookie = answer.headers["set-cookie"].split(";")[0]
        return {"Cookie": cookie}, answer.json()["csrf"]

    def call(self, method, path, body=None, cookie=None, csrf=None):
        headers = dict(cookie or {})
        if csrf is not None:
            headers["X-CSRF-Token"] = csrf
        return call(self.app, method, path, body, token=None, headers=headers)


@pytest.fixture
def dash():
    d = Dash()
    yield d
    d.manager.close()


# ---- the files -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "kind", "words"),
    [
        ("/", "text/html", b'<script src="/ui/app.js"'),
        ("/ui/app.js", "text/javascript", b"X-CSRF-Token"),
        ("/ui/app.css", "text/css", b".card"),
    ],
)
def test_the_files_are_public_typed_and_not_framed(dash, path, kind, words):
    answer = call(dash.app, "GET", path, token=None)
    assert answer.status == 200
    assert answer.headers["content-type"].startswith(kind)
    assert words in answer.body
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["cache-control"] == "no-cache" and answer.headers["etag"]


def test_a_file_the_browser_has_is_a_304_and_gzip_is_sent_when_accepted(dash):
    plain = call(dash.app, "GET", "/ui/app.js", token=None)
    again = call(dash.app, "GET", "/ui/app.js", token=None, headers={"If-None-Match": plain.headers["etag"]})
    assert again.status == 304 and again.body == b""
    zipped = call(dash.app, "GET", "/ui/app.js", token=None, headers={"Accept-Encoding": "gzip, deflate, br"})
    assert zipped.headers["content-encoding"] == "gzip" and zipped.headers["vary"] == "Accept-Encoding"
    assert gzip.decompress(zipped.body) == plain.body
    assert zipped.headers["etag"] != plain.headers["etag"]  # a cache must not hand gzip to a client that asked none
    stale = call(dash.app, "GET", "/ui/app.js", token=None, headers={"If-None-Match": '"older"'})
    assert stale.status == 200 and stale.body == plain.body


def test_the_page_is_small(dash):
    sizes = {}
    for path in web.PATHS:
        plain = call(dash.app, "GET", path, token=None)
        zipped = call(dash.app, "GET", path, token=None, headers={"Accept-Encoding": "gzip"})
        sizes[path] = (len(plain.body), len(zipped.body))
    total, total_gzip = sum(s[0] for s in sizes.values()), sum(s[1] for s in sizes.values())
    print(f"\ndashboard files: {sizes}; {total:,} bytes, {total_gzip:,} gzipped")
    assert total < 100_000, sizes


def test_other_files_and_methods_are_json_errors(dash):
    assert "no such file" in error_of(call(dash.app, "GET", "/ui/secret.py"), 404)
    assert error_of(call(dash.app, "GET", "/ui/secret.py", token=None), 401)  # only the page's own files are public
    assert error_of(call(dash.app, "POST", "/", token=None), 405)
    assert error_of(call(dash.app, "GET", "/tasks", token=None), 401)  # the data is not public


# ---- sign-in, sessions, CSRF ------------------------------------------------------------------------------------


def test_sign_in_sets_a_strict_http_only_cookie_and_returns_a_csrf_token(dash):
    answer = dash.sign_in()
    assert answer.status == 200
    flags = [part.strip() for part in answer.headers["set-cookie"].split(";")]
    assert flags[0].startswith("cube_session=") and len(flags[0]) > 40
    assert {"HttpOnly", "SameSite=Strict", "Path=/", f"Max-Age={LIFETIME}"} <= set(flags)
    assert "Secure" not in flags  # plain HTTP: a Secure cookie would never come back
    assert answer.headers["cache-control"] == "no-store"
    assert len(answer.json()["csrf"]) > 30
    assert "Secure" in dash.sign_in(**{"wsgi.url_scheme": "https"}).headers["set-cookie"].split("; ")


def test_the_join_token_and_a_form_sign_in_too(dash):
    whole = join_token(TOKEN, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    assert dash.sign_in(whole).status == 200
    form = call(
        dash.app,
        "POST",
        "/session",
        raw=f"token={TOKEN}".encode(),
        token=None,
        environ={"CONTENT_TYPE": "application/x-www-form-urlencoded"},
    )
    assert form.status == 200 and "cube_session=" in form.headers["set-cookie"]


@pytest.mark.parametrize("body", [{}, {"token": 5}, ["x"], {"token": None}])
def test_a_sign_in_without_a_token_is_a_400(dash, body):
    answer = call(dash.app, "POST", "/session", body, token=None)
    assert "cube token" in error_of(answer, 400)


def test_a_cookie_reads_and_acts_only_with_its_csrf_token(dash):
    cookie, csrf = dash.session()
    assert dash.call("GET", "/tasks", cookie=cookie).status == 200
    assert dash.call("GET", "/session", cookie=cookie).json()["csrf"] == csrf  # a reloaded page gets it again
    assert "X-CSRF-Token" in error_of(dash.call("POST", "/jobs", JOB, cookie=cookie), 403)
    assert error_of(dash.call("POST", "/jobs", JOB, cookie=cookie, csrf="forged"), 403)
    assert error_of(dash.call("POST", "/jobs", JOB, cookie=cookie, csrf=""), 403)
    assert dash.manager.job_names() == []
    assert dash.call("POST", "/jobs", JOB, cookie=cookie, csrf=csrf).status == 201
    assert dash.call("POST", "/jobs/web/scale", {"count": 2}, cookie=cookie, csrf=csrf).json()["count"] == 2
    # Another session's token does not fit this cookie.
    _, other = dash.session()
    assert error_of(dash.call("DELETE", "/jobs/web", cookie=cookie, csrf=other), 403)


def test_sign_out_ends_the_session(dash):
    cookie, csrf = dash.session()
    answer = dash.call("DELETE", "/session", cookie=cookie, csrf=csrf)
    assert answer.status == 204 and "Max-Age=0" in answer.headers["set-cookie"]
    assert "token" in error_of(dash.call("GET", "/tasks", cookie=cookie), 401)
    assert error_of(dash.call("POST", "/jobs", JOB, cookie=cookie, csrf=csrf), 401)


def test_a_sign_out_needs_the_csrf_token_too(dash):
    cookie, csrf = dash.session()
    assert error_of(dash.call("DELETE", "/session", cookie=cookie), 403)  # a cross-site page cannot sign you out
    assert dash.call("GET", "/tasks", cookie=cookie).status == 200


def test_a_session_ends_after_its_lifetime_and_when_the_token_is_rotated(dash):
    cookie, _ = dash.session()
    dash.clock.now += LIFETIME - 1
    assert dash.call("GET", "/tasks", cookie=cookie).status == 200
    dash.clock.now += 2
    assert error_of(dash.call("GET", "/tasks", cookie=cookie), 401)
    cookie, _ = dash.session()
    dash.secret = "rotated-secret"
    assert error_of(dash.call("GET", "/tasks", cookie=cookie), 401)
    assert error_of(dash.sign_in(), 401)
    assert dash.sign_in("rotated-secret").status == 200


@pytest.mark.parametrize("cookie", ["cube_session=", "cube_session=made-up", "other=1; cube_session", "garbage"])
def test_a_made_up_cookie_is_a_401(dash, cookie):
    assert error_of(dash.call("GET", "/tasks", cookie={"Cookie": cookie}), 401)


def test_the_bearer_token_still_works_without_a_csrf_token(dash):
    assert call(dash.app, "POST", "/jobs", JOB).status == 201
    assert call(dash.app, "GET", "/session").json()["csrf"] is None


def test_a_wrong_token_is_refused_with_a_message_and_the_sixth_is_a_429(dash):
    for tried in range(1, FAILURES + 1):
        message = error_of(dash.sign_in("guess-123"), 401)
        assert "wrong cluster token" in message and "cube token" in message
        assert "guess-123" not in message
        assert (f"{FAILURES - tried} more tries" if tried < FAILURES else "no more tries") in message
    limited = dash.sign_in(TOKEN)  # the right token too: the address has used up its tries
    assert "too many wrong tokens" in error_of(limited, 429)
    assert int(limited.headers["retry-after"]) == WINDOW
    assert dash.sign_in(TOKEN, address="192.0.2.8").status == 200  # another address is not held back
    dash.clock.now += 30
    assert int(dash.sign_in("wrong").headers["retry-after"]) == WINDOW - 30
    dash.clock.now += WINDOW - 30
    assert dash.sign_in(TOKEN).status == 200
    # A success forgets the failures before it.
    for _ in range(FAILURES - 1):
        error_of(dash.sign_in("wrong"), 401)
    assert dash.sign_in(TOKEN).status == 200
    assert error_of(dash.sign_in("wrong"), 401)


def test_a_forwarded_for_header_does_not_reset_the_limit(dash):
    for i in range(FAILURES + 1):
        answer = call(
            dash.app,
            "POST",
            "/session",
            {"token": "x"},
            token=None,
            headers={"X-Forwarded-For": f"198.51.100.{i}"},
            environ={"REMOTE_ADDR": "127.0.0.1"},
        )
    assert error_of(answer, 429)


def test_the_table_of_failures_and_sessions_is_bounded():
    clock = Clock()
    table = Sessions(clock)
    for i in range(12000):
        with pytest.raises(Exception, match="wrong cluster token"):
            table.open("x", TOKEN, f"client-{i}")
    assert len(table._failures) <= 10000
    opened = [table.open(TOKEN, TOKEN, "me")[0] for _ in range(1100)]
    assert len(table._sessions) == 1000 and opened[-1] in table._sessions and opened[0] not in table._sessions


def test_the_worker_takes_no_sessions():
    from cube.cluster.api import worker_app
    from cube.worker.runtime import FakeRuntime
    from cube.worker.worker import Worker

    worker = Worker("w1", FakeRuntime(), MemoryStore(), sync=True)
    try:
        app = worker_app(worker, TOKEN)
        assert error_of(call(app, "POST", "/session", {"token": TOKEN}, token=None), 404)
        assert error_of(call(app, "GET", "/", token=None), 404)
    finally:
        worker.close()


def test_an_open_api_needs_no_sign_in():
    manager = Manager(MemoryStore())
    try:
        app = manager_app(manager, None, Links(None), None)
        assert call(app, "GET", "/session", token=None).json() == {"csrf": None, "version": json_version(app)}
        assert "open" in error_of(call(app, "POST", "/session", {"token": "x"}, token=None), 404)
    finally:
        manager.close()


def json_version(app) -> str:
    return call(app, "GET", "/health", token=None).json()["version"]
