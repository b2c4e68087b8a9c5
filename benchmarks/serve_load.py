"""Load on attnmt-serve: a bounded number of single-sentence requests at 1, 4 and 16 concurrent
clients; throughput, p50/p99 latency and errors, beside attnmt-translate's throughput on the same
sentences. With ``--abuse``: what one client can do to the others instead.

    python benchmarks/serve_load.py --ckpt RUN_OR_EXPORT_DIR            # test_2016_flickr de
    python benchmarks/serve_load.py --ckpt DIR --requests 2000 --concurrency 1 4 16 --beam 5
    python benchmarks/serve_load.py --ckpt DIR --abuse                  # the abuse table

The server runs as its own process (``attnmt-serve``) on a free loopback port; clients are threads
sending ``POST /translate`` with one sentence each (cycling through the source file), over
keep-alive connections. Throughput is requests (= sentences) per second of wall time; latency is
per request, from send to the parsed reply. The baseline translates the same sentences (each once,
in the order sent) in one call of attnmt-translate's code path (model load excluded).

``--abuse`` starts a fresh server per case (its open-file soft limit set to 1,024, a common
default) and measures a 1-sentence beam-5 request's latency (p50/p99 of ``--probes`` sent one
after another) beside each case:

- ``alone``: nothing else;
- ``poisoned``: 8 ordinary requests sent together with one holding a lone surrogate, 10 rounds:
  how many ordinary requests failed;
- ``abandoned``: 6 of the largest requests the server accepts (64 x 1,000 characters, beam 16,
  attention; or what ``max_cost`` allows) whose clients give up after 1 s;
- ``heavy``: 4 such requests whose clients wait for the answer;
- ``slow``: 1,100 connections that send half a request's headers and then nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MULTI30K = ROOT.parent / "shared" / "data" / "multi30k"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(port: int, sentences: list[str], requests: int, concurrency: int, beam: int) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(requests))
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            body = json.dumps({"text": [sentences[i % len(sentences)]], "beam_size": beam})
            start = time.perf_counter()
            try:
                conn.request("POST", "/translate", body, {"Content-Type": "application/json"})
                reply = conn.getresponse()
                data = reply.read()
                if reply.status != 200 or not json.loads(data).get("translations"):
                    errors.append(f"{reply.status}")
            except Exception as e:  # noqa: BLE001 (counted, reported)
                errors.append(type(e).__name__)
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                continue
            with lock:
                latencies.append(time.perf_counter() - start)
        conn.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {"concurrency": concurrency, "requests": requests, "seconds": round(wall, 2),
            "req_s": round(len(latencies) / wall, 2), "p50_ms": round(1000 * q[49], 1),
            "p99_ms": round(1000 * q[98], 1), "errors": len(errors)}


def baseline(ckpt: str, sentences: list[str], beam: int, batch: int | None = None) -> float:
    """Sentences/s of attnmt-translate's code path on ``sentences`` (model load excluded): in one
    call, or ``batch`` sentences at a time in the order sent (what a server with ``batch`` clients
    of one sentence each can batch at most)."""
    from attnmt.decode.settings import DecodeSettings
    from attnmt.deploy.translate import TranslateSettings, Translator

    translator = Translator(TranslateSettings(ckpt=ckpt), DecodeSettings(beam_size=beam), progress=False)
    translator.translate(sentences[:2])  # warm up
    step = batch or len(sentences)
    start = time.perf_counter()
    for i in range(0, len(sentences), step):
        translator.translate(sentences[i: i + step])
    return len(sentences) / (time.perf_counter() - start)


@contextlib.contextmanager
def server(ckpt: str, nofile: int | None = None):
    """attnmt-serve on a free port in its own process (open-file soft limit ``nofile``)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}

    def limit() -> None:
        if nofile:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    proc = subprocess.Popen([sys.executable, "-m", "attnmt.deploy.serve", f"ckpt={ckpt}", f"port={port}"],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True, preexec_fn=limit)
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None:
                    sys.exit(f"attnmt-serve exited:\n{proc.stderr.read()[-3000:]}")
                time.sleep(0.5)
        yield port
        print(f"attnmt-serve peak RSS: {peak_rss_mib(proc.pid):.0f} MiB", file=sys.stderr)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:  # still waiting on clients' connections
            proc.kill()
            proc.wait()


def peak_rss_mib(pid: int) -> float:
    """A process's peak resident memory (``VmHWM``), MiB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def post(port: int, body: str, timeout: float = 300) -> int:
    """The status of one request (0 when it got no answer)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/translate", body, {"Content-Type": "application/json"})
        reply = conn.getresponse()
        reply.read()
        return reply.status
    except OSError:
        return 0
    finally:
        conn.close()


def probe(port: int, sentence: str, n: int, timeout: float = 120) -> dict:
    """p50/p99 (ms) and failures (no 200 within ``timeout`` s) of ``n`` 1-sentence beam-5 requests
    sent one after another."""
    body = json.dumps({"text": [sentence], "beam_size": 5})
    latencies, errors = [], 0
    for _ in range(n):
        start = time.perf_counter()
        status = post(port, body, timeout=timeout)
        latencies.append(time.perf_counter() - start)
        errors += status != 200
    q = statistics.quantiles(latencies, n=100)
    return {"p50_ms": 1000 * q[49], "p99_ms": 1000 * q[98], "errors": errors}


def largest_request(port: int, sentences: list[str]) -> str:
    """The largest request the server takes: 64 x 1,000 characters at beam 16 with attention,
    fewer sentences when its ``max_cost`` says so."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metadata") as reply:
        limits = json.loads(reply.read())["limits"]
    chars, beam = limits["max_chars"], limits["max_beam"]
    count = min(limits["max_sentences"], limits.get("max_cost", 10**12) // (chars * beam)) or 1
    text = " ".join(sentences)
    long = [text[i * chars: (i + 1) * chars].strip() for i in range(count)]
    return json.dumps({"text": long, "beam_size": beam, "attention": True})


def abuse_case(name: str, port: int, sentences: list[str], probes: int, timeout: float) -> dict:
    small = sentences[0]
    if name == "alone":
        return {**probe(port, small, probes, timeout), "note": ""}
    if name == "poisoned":
        bodies = [json.dumps({"text": [s], "beam_size": 5}) for s in sentences[1:9]] + ['{"text": ["a \\ud800 b"]}']
        failed = 0
        with ThreadPoolExecutor(len(bodies)) as pool:
            for _ in range(10):
                failed += sum(status != 200 for status in list(pool.map(lambda b: post(port, b), bodies))[:-1])
        return {**probe(port, small, probes, timeout), "note": f"{failed} of 80 ordinary requests failed"}
    big = largest_request(port, sentences)
    if name == "abandoned":
        def give_up() -> None:
            post(port, big, timeout=1.0)
        threads = [threading.Thread(target=give_up) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        count = len(json.loads(big)["text"])
        return {**probe(port, small, probes, timeout), "note": f"6 x {count} sentences abandoned"}
    if name == "heavy":
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(post, port, big) for _ in range(4)]
            time.sleep(0.5)
            result = probe(port, small, probes, timeout)
            statuses = sorted({f.result() for f in futures})
        return {**result, "note": f"4 x {len(json.loads(big)['text'])} sentences, answered {statuses}"}
    if name == "slow":
        held, refused = [], 0
        for _ in range(1100):
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                sock.sendall(b"POST /translate HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                held.append(sock)
            except OSError:
                refused += 1
        result = probe(port, small, probes, timeout)
        closed = 0
        for sock in held:
            sock.setblocking(False)
            try:
                closed += sock.recv(1) == b""
            except (BlockingIOError, OSError):
                pass
            sock.close()
        return {**result, "note": f"1,100 half-sent: {refused} refused, {closed} cut off by the server"}
    raise ValueError(name)


def abuse(args, sentences: list[str]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))  # our 1,100 sockets
    print(f"attnmt-serve ckpt={args.ckpt}: a 1-sentence beam-5 request ({args.probes} one after another) "
          "beside each case; server open-file soft limit 1,024")
    print(f"{'case':10s} {'p50 ms':>9s} {'p99 ms':>9s} {'failed':>6s}  beside it")
    for name in args.cases:
        with server(args.ckpt, nofile=1024) as port:
            post(port, json.dumps({"text": sentences[:8], "beam_size": 5}))  # warm up
            r = abuse_case(name, port, sentences, args.probes, args.timeout)
            print(f"{name:10s} {r['p50_ms']:9.1f} {r['p99_ms']:9.1f} {r['errors']:6d}  {r['note']}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="a run folder, .ckpt or attnmt-export folder")
    parser.add_argument("--src", default=str(MULTI30K / "test_2016_flickr.de.gz"))
    parser.add_argument("--requests", type=int, default=2000, help="requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--abuse", action="store_true", help="the abuse cases instead of the load levels")
    parser.add_argument("--cases", nargs="+", default=["alone", "poisoned", "abandoned", "heavy", "slow"])
    parser.add_argument("--probes", type=int, default=30, help="small requests measured per abuse case")
    parser.add_argument("--timeout", type=float, default=120, help="seconds a small request may take before it "
                        "counts as failed")
    args = parser.parse_args()

    from attnmt.data.io import read_lines

    sentences = [s for s in read_lines(Path(args.src)) if s.strip()]
    if args.abuse:
        abuse(args, sentences)
        return
    with server(args.ckpt) as port:
        rows = [load(port, sentences, args.requests, c, args.beam) for c in args.concurrency]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health") as reply:
            health = json.loads(reply.read())
    n = min(args.requests, len(sentences))
    base = baseline(args.ckpt, sentences[:n], args.beam)
    print(f"attnmt-serve ckpt={args.ckpt}, beam {args.beam}, single-sentence requests from {args.src}")
    print(f"{'clients':>7s} {'requests':>8s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>6s} "
          f"{'x translate':>11s}")
    for r in rows:
        print(f"{r['concurrency']:7d} {r['requests']:8d} {r['req_s']:8.2f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} "
              f"{r['errors']:6d} {r['req_s'] / base:11.2f}")
    print(f"attnmt-translate on the same {n} sentences: {base:.2f} sentences/s (model load excluded)")
    for c in args.concurrency:
        capped = baseline(args.ckpt, sentences[:n], args.beam, batch=c)
        row = next(r for r in rows if r["concurrency"] == c)
        print(f"  in batches of {c} sentences (the most {c} clients can fill): {capped:.2f} sentences/s; "
              f"the server at {c} clients reaches {row['req_s'] / capped:.2f} of it")
    print(f"server: {health['requests']} requests decoded in {health['batches']} batches")


if __name__ == "__main__":
    main()
