"""attnmt-serve under strangers' requests, with a stand-in model (no training): one request's
fault stays its own, work is bounded (queue, cost, time, abandoned requests, slow clients), and
the server answers only its own hosts and key, always in JSON."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed (pip install -e '.[serve]')")
pytest.importorskip("uvicorn", reason="the serve extra is not installed (pip install -e '.[serve]')")

from attnmt.decode.backends import Backend  # noqa: E402
from attnmt.deploy.serve import ServeSettings, parse_request  # noqa: E402
from attnmt.deploy.serve_http import RequestError  # noqa: E402

from conftest import serving  # noqa: E402

POISON = 666  # the id of the word "POISON": decoding any batch that holds it fails


class FakeBackend(Backend):
    """Words become their lengths; a translation is the ids joined; decoding takes ``delay`` s per
    sentence and records what it decoded."""

    metadata = {"model": "Fake", "backend": "fake", "checkpoint": "fake.ckpt", "languages": {}}
    kind = "fake"

    def __init__(self, delay: float = 0.0):
        self.delay, self.decoded, self.lock = delay, [], threading.Lock()

    def encode(self, lines):
        if any("UNENCODABLE" in line for line in lines):
            raise ValueError("cannot encode this")
        return [[POISON if w == "POISON" else len(w) for w in line.split()] for line in lines]

    def decode(self, sources, beam_size, attention):
        time.sleep(self.delay * len(sources))
        if any(POISON in s for s in sources):
            raise RuntimeError("poisoned batch")
        with self.lock:
            self.decoded.extend(tuple(s) for s in sources)
        return [{"translation": " ".join(map(str, s))} for s in sources]


def request(port: int, method: str, path: str, body=None, headers: dict | None = None, timeout: float = 30):
    """(status, headers, parsed JSON or text) of one request on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    conn.request(method, path, body, {"Content-Type": "application/json", **(headers or {})})
    reply = conn.getresponse()
    data = reply.read().decode()
    conn.close()
    try:
        return reply.status, dict(reply.getheaders()), json.loads(data)
    except ValueError:
        return reply.status, dict(reply.getheaders()), data


def translate(port, text, **keys):
    return request(port, "POST", "/translate", {"text": text, **keys})


def test_one_bad_request_fails_alone_the_others_in_its_batch_are_answered():
    backend = FakeBackend(delay=0.01)
    good = [f"{'a ' * (i + 1)}b" for i in range(8)]
    with serving(backend, batch_wait_ms=300) as port:  # all ten arrive within one batch's wait
        with ThreadPoolExecutor(10) as pool:
            replies = list(pool.map(lambda t: translate(port, [t]), good + ["a POISON b"]))
            surrogate = pool.submit(request, port, "POST", "/translate", b'{"text": ["a \\ud800 b"]}').result()
        health = request(port, "GET", "/health")[2]
    for text, (status, _, body) in zip(good, replies):
        assert status == 200, body
        assert body["translations"] == [" ".join(str(len(w)) for w in text.split())]
    status, _, body = replies[-1]
    assert status == 500 and body["error"].startswith("decoding failed: RuntimeError")
    assert surrogate[0] == 400 and "not valid Unicode" in surrogate[2]["error"]
    assert health["requests"] == 8 and health["status"] == "ok"


def test_text_that_cannot_be_encoded_is_a_400_for_its_request():
    with serving(FakeBackend()) as port:
        status, _, body = translate(port, ["fine", "UNENCODABLE text"])
        assert status == 400 and body["error"] == "the text could not be encoded: ValueError: cannot encode this"
        assert translate(port, ["fine"])[0] == 200


def test_a_small_request_waits_for_one_batch_not_for_a_large_one():
    backend = FakeBackend(delay=0.05)
    big = ["w " * 20 + "end"] * 30  # 30 sentences, one per batch under this budget
    with serving(backend, batch_wait_ms=0, batch_cost=30) as port, ThreadPoolExecutor(2) as pool:
        large = pool.submit(translate, port, big, beam_size=1)
        while len(backend.decoded) < 3:
            time.sleep(0.01)
        before = len(backend.decoded)
        small = translate(port, ["tiny"], beam_size=1)
        assert small[0] == 200 and small[2]["translations"] == ["4"]
        assert large.result()[0] == 200
    position = backend.decoded.index((4,))
    assert position <= before + 1, f"the small request came after {position} of the large one's 30 sentences"


def test_requests_whose_client_left_are_not_decoded():
    backend = FakeBackend(delay=0.05)
    big = [f"{'w ' * 10}{i}" for i in range(40)]
    with serving(backend, batch_wait_ms=0, batch_cost=50) as port:
        for _ in range(3):  # three clients give up on a large request after 0.2 s
            conn = http.client.HTTPConnection("127.0.0.1", port)
            conn.request("POST", "/translate", json.dumps({"text": big, "beam_size": 1}),
                         {"Content-Type": "application/json"})
            time.sleep(0.2)
            conn.close()
        assert translate(port, ["ok"], beam_size=1)[0] == 200
        time.sleep(0.3)
    abandoned = len(backend.decoded) - 1
    assert abandoned < 3 * 40 // 2, f"{abandoned} of the 120 abandoned sentences were decoded"


def test_a_full_queue_is_a_503_with_retry_after_and_the_server_recovers():
    backend = FakeBackend(delay=0.3)
    with serving(backend, max_queue=2, batch_wait_ms=0) as port, ThreadPoolExecutor(3) as pool:
        first = [pool.submit(translate, port, [f"s{i}"]) for i in range(2)]
        time.sleep(0.1)
        status, headers, body = translate(port, ["one too many"])
        assert status == 503 and headers["retry-after"] == "1" and "busy" in body["error"]
        assert all(f.result()[0] == 200 for f in first)
        assert translate(port, ["after"])[0] == 200


def test_a_response_that_takes_too_long_is_a_503_and_is_not_decoded_further():
    backend = FakeBackend(delay=0.2)
    with serving(backend, timeout_s=0.5, batch_wait_ms=0, batch_cost=4) as port:  # one sentence a batch
        status, headers, body = translate(port, ["a b c"] * 20, beam_size=1)
        assert status == 503 and "timeout_s=0.5" in body["error"] and "retry-after" in headers
        time.sleep(1.5)  # 7 more sentences' time
        assert len(backend.decoded) < 6


def test_request_cost_is_capped():
    settings = ServeSettings(ckpt="x", max_cost=10_000)
    text, beam, _ = parse_request(json.dumps({"text": ["x" * 100] * 20, "beam_size": 5}).encode(), settings)
    assert (len(text), beam) == (20, 5)  # cost 10,000: allowed
    with pytest.raises(RequestError) as error:
        parse_request(json.dumps({"text": ["x" * 100] * 20, "beam_size": 6}).encode(), settings)
    assert error.value.status == 413 and "12000" in str(error.value) and "max_cost=10000" in str(error.value)


@pytest.mark.parametrize("body", [
    b'{"text": ["a"], "beam_size": ' + b"9" * 5000 + b"}",  # past Python's int digit limit
    b"[" * 50_000 + b"]" * 50_000,  # past the recursion limit
    b'{"text": ["a \\udfff"]}',  # a lone surrogate
])
def test_hostile_json_is_a_400_with_a_reason(body):
    with pytest.raises(RequestError) as error:
        parse_request(body, ServeSettings(ckpt="x"))
    assert error.value.status == 400 and "\n" not in str(error.value)


def test_every_error_is_json_and_needs_json_in():
    with serving(FakeBackend()) as port:
        for method, path, body, headers, expected in [
            ("POST", "/translate", '{"text": ["a"]}', {"Content-Type": "text/plain"}, 415),
            ("POST", "/translate", '{"text": ["a"]}', {"Content-Type": "application/x-www-form-urlencoded"}, 415),
            ("GET", "/translate", None, {}, 405),
            ("GET", "/nowhere", None, {}, 404),
            ("POST", "/translate", '{"text": ["a"], "beam_size": 99}', {}, 400),
        ]:
            status, _, reply = request(port, method, path, body, headers)
            assert status == expected and isinstance(reply, dict) and reply["error"], (path, status, reply)


def test_only_this_servers_host_names_are_answered():
    with serving(FakeBackend()) as port:
        assert request(port, "GET", "/health", headers={"Host": f"localhost:{port}"})[0] == 200
        status, _, body = request(port, "GET", "/health", headers={"Host": "attacker.example"})
        assert status == 400 and "attacker.example" in body["error"]
    with serving(FakeBackend(), allowed_hosts="mt.example.org") as port:
        assert request(port, "GET", "/health", headers={"Host": "mt.example.org"})[0] == 200
        assert request(port, "GET", "/health", headers={"Host": f"127.0.0.1:{port}"})[0] == 400


def test_an_api_key_guards_translation_and_metadata(monkeypatch):
    monkeypatch.setenv("ATTNMT_API_KEY", "s3cret")
    with serving(FakeBackend()) as port:
        for path, body in [("/translate", {"text": ["a"]}), ("/metadata", None)]:
            status, headers, reply = request(port, "POST" if body else "GET", path, body)
            assert status == 401 and headers["www-authenticate"] == "Bearer" and "API key" in reply["error"]
            wrong = request(port, "POST" if body else "GET", path, body, {"Authorization": "Bearer s3cre"})
            assert wrong[0] == 401
            right = request(port, "POST" if body else "GET", path, body, {"Authorization": "Bearer s3cret"})
            assert right[0] == 200
        assert request(port, "GET", "/health")[0] == 200  # liveness stays open


def test_the_page_runs_only_its_own_script_and_cannot_be_framed():
    with serving(FakeBackend()) as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/")
        reply = conn.getresponse()
        page = reply.read().decode()
    policy = reply.getheader("content-security-policy")
    script = re.search(r"<script>(.*?)</script>", page, re.DOTALL).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}';" in policy and "frame-ancestors 'none'" in policy
    assert "connect-src 'self'" in policy and "unsafe-eval" not in policy
    assert reply.getheader("x-frame-options") == "DENY" and reply.getheader("x-content-type-options") == "nosniff"


def test_a_client_sending_headers_slowly_is_cut_off_and_others_are_served():
    with serving(FakeBackend(), read_timeout_s=0.5) as port:
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"POST /translate HTTP/1.1\r\nHost: localhost\r\n")  # and never the rest
        slow.settimeout(5)  # recv raises if the server has not closed it by then
        assert slow.recv(1024) == b"", "the server should close the connection"
        slow.close()
        assert translate(port, ["still serving"])[0] == 200


def test_a_body_that_does_not_arrive_in_time_is_a_408():
    with serving(FakeBackend(), read_timeout_s=0.5) as port:
        conn = socket.create_connection(("127.0.0.1", port))
        conn.sendall(b"POST /translate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"text\": ")
        conn.settimeout(5)
        reply = b""
        while b"}" not in reply:
            chunk = conn.recv(4096)
            if not chunk:
                break
            reply += chunk
        conn.close()
    assert reply.startswith(b"HTTP/1.1 408") and b'"error"' in reply


def test_connections_past_the_limit_push_out_the_longest_idle_ones():
    with serving(FakeBackend(), max_connections=5, read_timeout_s=30) as port:
        held = []
        for _ in range(12):  # half-sent requests, never finished
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"POST /translate HTTP/1.1\r\nHost: localhost\r\n")
            held.append(sock)
            time.sleep(0.02)
        status, _, body = translate(port, ["served"])
        assert status == 200 and body["translations"] == ["6"]
        closed = []
        for sock in held:
            sock.settimeout(0.5)
            try:
                closed.append(sock.recv(1) == b"")
            except TimeoutError:
                closed.append(False)
            sock.close()
    assert closed[:8] == [True] * 8 and closed[-4:] == [False] * 4, closed


@pytest.mark.parametrize("hosts", ["http://mt.example.org", "mt.example.org:8000", "mt example", "a/b"])
def test_allowed_hosts_must_be_host_names(hosts, capsys):
    from attnmt.deploy.serve import main

    with pytest.raises(SystemExit) as stop:
        main(["ckpt=/nonexistent", f"allowed_hosts=localhost,{hosts}"])
    line = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and line.startswith("error: allowed_hosts: ") and repr(hosts) in line, line


def test_the_model_loads_in_the_thread_that_decodes(monkeypatch):
    """On a CPU, torch run from a second thread (a second OpenMP pool) decoded 2-3x slower."""
    import attnmt.deploy.serve
    import attnmt.deploy.serve_http

    seen = {}

    def load(ckpt, device, compute_type):
        seen["load"], seen["where"] = threading.current_thread().name, (device, compute_type)
        return FakeBackend()

    def serve(app, settings):
        seen["decode"] = app.state.scheduler.executor.submit(lambda: threading.current_thread().name).result()

    monkeypatch.setattr(attnmt.deploy.serve, "load_backend", load)
    monkeypatch.setattr(attnmt.deploy.serve_http, "serve", serve)
    attnmt.deploy.serve.main(["ckpt=x", "device=cpu"])
    assert seen["load"] == seen["decode"] != threading.main_thread().name, seen
    assert seen["where"] == ("cpu", "auto")
