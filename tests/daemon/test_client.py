"""The CLI's client against the real API server (in a thread), and against nothing at all."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator

import pytest
from support.api_fakes import TOKEN, FakeController, ServerThread, server_thread

from vouch.core.errors import AuthError, ConflictError, InputError, NotFoundError
from vouch.daemon.client import DaemonUnreachable, VouchClient
from vouch.rollout.state import Event


@pytest.fixture
def server() -> Iterator[ServerThread]:
    with server_thread(FakeController(), max_body_bytes=4096) as running:
        yield running


@pytest.fixture
def client(server: ServerThread) -> Iterator[VouchClient]:
    with VouchClient(server.base_url, TOKEN, actor="carol") as connected:
        yield connected


def test_every_route(server: ServerThread, client: VouchClient) -> None:
    assert client.health() == {"status": "ok"}
    assert client.ready() is True
    submitted = client.submit("checkout", "2.4.1")
    release_id = submitted["release"]["id"]
    pid = submitted["promotions"][0]["id"]
    assert submitted["release"]["environments"] == ["staging", "production"]
    one_env = client.submit("search", "1.0", environment="staging")
    assert one_env["release"]["environments"] == ["staging"]
    assert server.controller.actors == ["carol", "carol"]

    listed = client.list_promotions(service="checkout", environment="staging", active=True, limit=5)
    assert [p["id"] for p in listed["promotions"]] == [pid]
    assert client.list_promotions(active=False)["promotions"] == []
    assert [p["id"] for p in client.list_promotions(release=release_id)["promotions"]] == [pid]
    detail = client.get_promotion(pid)
    assert detail["promotion"]["id"] == pid
    assert set(detail) == {"promotion", "steps", "verdicts", "events"}

    assert {r["id"] for r in client.list_releases()["releases"]} == {release_id, one_env["release"]["id"]}
    assert [r["id"] for r in client.list_releases(service="search", active=True, limit=1)["releases"]] == [
        one_env["release"]["id"]
    ]
    assert client.get_release(release_id)["promotions"][0]["id"] == pid

    server.call(server.controller.store.add_event(Event("tick", "hello", 1.0, promotion_id=pid)))
    server.call(server.controller.store.add_event(Event("tick", "later", 2.0, promotion_id=pid)))
    assert [e["message"] for e in client.events(promotion=pid)["events"]] == ["hello", "later"]
    assert [e["message"] for e in client.events(after=1, limit=10)["events"]] == ["later"]
    assert client.events(release="nope")["events"] == []

    alert = {"status": "firing", "labels": {"service": "checkout", "environment": "staging"}}
    received = client.send_alerts({"version": "4", "status": "firing", "alerts": [alert]})
    assert received == {"received": 1, "matched": [pid]}
    assert len(client.list_alerts(limit=5)["alerts"]) == 1

    aborted = client.abort(pid, reason="enough")
    assert aborted["promotion"]["abort"]["reason"] == "enough"


def test_ids_are_escaped_in_paths(client: VouchClient) -> None:
    with pytest.raises(NotFoundError, match="no promotion 'a/b'"):
        client.get_promotion("a/b")
    with pytest.raises(InputError, match="empty"):
        client.get_release("")


def test_errors_become_vouch_errors(server: ServerThread, client: VouchClient) -> None:
    with pytest.raises(NotFoundError, match="unknown service 'nope'"):
        client.submit("nope", "1")
    pid = client.submit("search", "1")["promotions"][0]["id"]
    with pytest.raises(ConflictError):
        client.submit("search", "2")
    client.abort(pid)
    with pytest.raises(ConflictError, match="already"):
        client.abort(pid)
    with pytest.raises(InputError, match="must not start with"):
        client.submit("checkout", "-1")
    with pytest.raises(InputError, match="environment") as caught:
        client.submit("checkout", "1", environment="")
    assert not isinstance(caught.value, NotFoundError)
    with pytest.raises(InputError, match=r"alerts\[0\]\.labels"):
        client.send_alerts({"alerts": [{}]})


def test_a_server_failure_is_reported_with_what_to_do(client: VouchClient) -> None:
    with pytest.raises(DaemonUnreachable, match=r"HTTP 500.*daemon's log"):
        client.submit("boom", "1")
    assert client.health() == {"status": "ok"}  # the same client, and the server, carry on


def test_a_wrong_token_is_an_auth_error(server: ServerThread) -> None:
    with VouchClient(server.base_url, "not-the-token") as client, pytest.raises(AuthError, match="--token"):
        client.list_promotions()


def test_not_ready_reads_as_false(server: ServerThread, client: VouchClient) -> None:
    server.controller.is_ready = False
    assert client.ready() is False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_connection_refused_says_how_to_start_the_daemon() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with VouchClient(url, TOKEN) as client, pytest.raises(DaemonUnreachable) as caught:
        client.health()
    message = str(caught.value)
    assert url in message
    assert "vouch daemon --config FILE" in message
    assert caught.value.retryable


def test_a_silent_daemon_times_out() -> None:
    with socket.socket() as listener:  # accepts connections (backlog) and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with VouchClient(url, TOKEN, timeout=0.3) as client, pytest.raises(DaemonUnreachable, match=r"0\.3s"):
            client.health()


class _Html(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html>not vouch</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


def test_something_else_on_the_port_is_not_taken_for_the_daemon() -> None:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Html)
    thread = threading.Thread(target=httpd.serve_forever, name="html-server", daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        with VouchClient(url, TOKEN) as client, pytest.raises(DaemonUnreachable, match="other than JSON"):
            client.list_promotions()
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize("url", ["ftp://example", "localhost:8080", "http://"])
def test_a_bad_url_is_an_input_error(url: str) -> None:
    with pytest.raises(InputError, match="URL"):
        VouchClient(url, TOKEN)
