"""Load on attnmt-serve: a bounded number of single-sentence requests at 1, 4 and 16 concurrent
clients; throughput, p50/p99 latency and errors, beside attnmt-translate's throughput on the same
sentences.

    python benchmarks/serve_load.py --ckpt RUN_OR_EXPORT_DIR            # test_2016_flickr de
    python benchmarks/serve_load.py --ckpt DIR --requests 2000 --concurrency 1 4 16 --beam 5

The server runs as its own process (``attnmt-serve``) on a free loopback port; clients are threads
sending ``POST /translate`` with one sentence each (cycling through the source file), over
keep-alive connections. Throughput is requests (= sentences) per second of wall time; latency is
per request, from send to the parsed reply. The baseline translates the same sentences (each once,
in the order sent) in one call of attnmt-translate's code path (model load excluded).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
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


def baseline(ckpt: str, sentences: list[str], beam: int) -> float:
    """Sentences/s of attnmt-translate's code path on ``sentences`` (load excluded)."""
    from attnmt.translate import DecodeSettings, TranslateSettings, translate_lines

    translate_lines(TranslateSettings(ckpt=ckpt), DecodeSettings(beam_size=beam), sentences[:2])  # load, warm up
    start = time.perf_counter()
    translate_lines(TranslateSettings(ckpt=ckpt), DecodeSettings(beam_size=beam), sentences)
    return len(sentences) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="a run folder, .ckpt or attnmt-export folder")
    parser.add_argument("--src", default=str(MULTI30K / "test_2016_flickr.de.gz"))
    parser.add_argument("--requests", type=int, default=2000, help="requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--beam", type=int, default=5)
    args = parser.parse_args()

    from attnmt.data.io import read_lines

    sentences = [s for s in read_lines(Path(args.src)) if s.strip()]
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    server = subprocess.Popen([sys.executable, "-m", "attnmt.serve", f"ckpt={args.ckpt}", f"port={port}"],
                              cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                    break
            except OSError:
                if server.poll() is not None:
                    sys.exit(f"attnmt-serve exited:\n{server.stderr.read()[-3000:]}")
                time.sleep(0.5)
        rows = [load(port, sentences, args.requests, c, args.beam) for c in args.concurrency]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health") as reply:
            health = json.loads(reply.read())
    finally:
        server.terminate()
        server.wait(30)
    n = min(args.requests, len(sentences))
    base = baseline(args.ckpt, sentences[:n], args.beam)
    print(f"attnmt-serve ckpt={args.ckpt}, beam {args.beam}, single-sentence requests from {args.src}")
    print(f"{'clients':>7s} {'requests':>8s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>6s} "
          f"{'x translate':>11s}")
    for r in rows:
        print(f"{r['concurrency']:7d} {r['requests']:8d} {r['req_s']:8.2f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} "
              f"{r['errors']:6d} {r['req_s'] / base:11.2f}")
    print(f"attnmt-translate on the same {n} sentences: {base:.2f} sentences/s (model load excluded)")
    print(f"server: {health['requests']} requests decoded in {health['batches']} batches")


if __name__ == "__main__":
    main()
