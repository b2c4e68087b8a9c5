"""A translation server with a live attention view, and the ``attnmt-serve`` command.

``attnmt-serve ckpt=RUN_OR_DIR [host=127.0.0.1] [port=8000]`` serves a checkpoint (decoded by
attnmt's PyTorch search, attention of every layer and head) or an ``attnmt-export`` folder
(decoded by CTranslate2, the last layer's attention averaged over heads) over HTTP with Starlette
and uvicorn:

- ``POST /translate`` ``{"text": ["...", ...], "beam_size": 5, "attention": false}`` ->
  ``{"translations": [...]}``, plus with ``"attention": true`` per sentence its source and target
  words and word-level cross-attention ``weights[layer][head][target word][source word]`` (rows
  sum to 1: the weight on ``</s>`` is dropped and each row renormalised);
- ``GET /`` a single self-contained page (serve.html: no CDN) to type sentences and see the
  translations and a heatmap; ``GET /health``; ``GET /metadata``.

Requests are strangers' data. Each is checked and encoded on its own (a sentence that cannot be
encoded fails its own request with a 400); the work one request may cause is capped (sentences,
characters, beam, their product); at most ``max_queue`` requests wait (then 503 with
``Retry-After``); a request whose client has gone is dropped; a response that takes longer than
``timeout_s`` is a 503. Decoding is batched across requests by :mod:`attnmt.deploy.serve_scheduler`.
Every error is JSON ``{"error": "one line"}``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from attnmt.decode.backends import load_backend  # noqa: F401 (part of this module's interface)
from attnmt.deploy.serve_http import RequestError
from attnmt.errors import ConfigError
from attnmt.utils.device import COMPUTE_TYPES
from attnmt.utils.schema import Ge, Gt, Le

log = logging.getLogger(__name__)
EXTRA_HINT = "pip install 'attnmt[serve]' (starlette and uvicorn)"
API_KEY_ENV = "ATTNMT_API_KEY"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
HOST_NAME = re.compile(r"\*|(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*|\[?[0-9A-Fa-f:.]+\]?")

USAGE_HEAD = """usage: attnmt-serve ckpt=RUN_OR_DIR [host=127.0.0.1] [port=8000] [key=value ...]

Serve a trained model over HTTP: a page to translate sentences and see their attention
(GET /), a JSON API (POST /translate), GET /health and GET /metadata.

keys:
"""
USAGE_TAIL = """
POST /translate takes {"text": ["...", ...], "beam_size": 5, "attention": false} as
application/json. Needs the serve extra: pip install 'attnmt[serve]'. A bad key or value is one
line on stderr (error: ...) and exit status 2.
"""


def _key(default, help_text: str, metavar: str = "N"):
    return field(default=default, metadata={"help": help_text, "metavar": metavar})


@dataclass
class ServeSettings:
    """The keys of ``attnmt-serve`` (its ``--help`` is written from them)."""

    ckpt: str = field(metadata={
        "help": "a .ckpt file, a training run's folder or an attnmt-export folder", "metavar": "PATH"})
    host: str = _key("127.0.0.1", "address to listen on", "HOST")
    port: Annotated[int, Ge(1), Le(65535)] = _key(8000, "port")
    max_sentences: Annotated[int, Ge(1)] = _key(64, "most sentences in one request")
    max_chars: Annotated[int, Ge(1)] = _key(1000, "longest sentence in characters")
    max_beam: Annotated[int, Ge(1)] = _key(16, "largest beam_size a request may ask for")
    max_cost: Annotated[int, Ge(1)] = _key(128_000, "most characters x beam_size in one request (413 above)")
    max_queue: Annotated[int, Ge(1)] = _key(100, "most requests waiting or decoding (503 + Retry-After above)")
    timeout_s: Annotated[float, Gt(0)] = _key(60.0, "longest a request may wait for its translation (then 503)", "S")
    batch_cost: Annotated[int, Ge(1)] = _key(4096, "source tokens x beam_size decoded in one batch")
    batch_wait_ms: Annotated[float, Ge(0)] = _key(
        5.0, "how long a batch not yet full waits for more requests to join it", "MS")
    max_connections: Annotated[int, Ge(1)] = _key(1000, "open connections; past it, the longest-idle one is closed")
    read_timeout_s: Annotated[float, Gt(0)] = _key(
        10.0, "a client must send its headers, and then its body, within S seconds", "S")
    allowed_hosts: str = _key("auto", "Host headers answered, comma-separated (DNS rebinding); auto: loopback names "
                              "when host is a loopback address, else any (*)", "H,..")
    device: str = _key("auto", "where to decode: auto (the first CUDA GPU where one is visible, else the CPU), cpu, "
                       "cuda or cuda:N", "DEV")
    compute_type: Literal[COMPUTE_TYPES] = _key("auto", "number format: auto is bfloat16 on a GPU with fast bf16 "
                                                "(an export: float16), else float32 (an export: its own type); int8 "
                                                "types are for exports only", "T")
    api_key: str = _key("", 'require "Authorization: Bearer KEY" on /translate and /metadata; better set in the '
                        f"environment as {API_KEY_ENV}, which ps does not show (empty: none)", "KEY")

    def hosts(self) -> list[str]:
        """The Host names answered; a ConfigError for one that is not a host name."""
        if self.allowed_hosts == "auto":
            return list(LOOPBACK) if self.host in LOOPBACK else ["*"]
        names = [h.strip() for h in self.allowed_hosts.split(",") if h.strip()]
        for name in names:
            if not HOST_NAME.fullmatch(name):
                raise ConfigError(f"allowed_hosts: {name!r} is not a host name; give names such as "
                                  "mt.example.org, *.example.org, 127.0.0.1 or ::1 (no scheme, port or path), or *")
        return names or ["*"]

    def key(self) -> str:
        return self.api_key or os.environ.get(API_KEY_ENV, "")


def parse_request(body: bytes, settings: ServeSettings) -> tuple[list[str], int, bool]:
    """The sentences, beam size and attention flag of a ``/translate`` body, or a RequestError."""
    if not body.strip():
        raise RequestError(400, "empty request body: send JSON {\"text\": [\"...\"]}")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        if isinstance(e, (json.JSONDecodeError, UnicodeDecodeError)):
            reason = str(e).splitlines()[0][:120]
        else:  # Python's own limits: nesting depth, digits in an integer
            reason = "nested too deeply" if isinstance(e, RecursionError) else "a number with too many digits"
        raise RequestError(400, f"the body is not JSON we accept ({reason})") from None
    if not isinstance(data, dict):
        raise RequestError(400, "the body must be a JSON object {\"text\": [\"...\"]}")
    unknown = sorted(set(data) - {"text", "beam_size", "attention"})
    if unknown:
        raise RequestError(400, f"unknown key {unknown[0][:40]!r}: keys are text, beam_size, attention")
    text = data.get("text")
    if isinstance(text, str):
        text = [text]
    if not isinstance(text, list) or not all(isinstance(t, str) for t in text):
        raise RequestError(400, "\"text\" must be a list of strings")
    if not text:
        raise RequestError(400, "\"text\" is empty: give at least one sentence")
    if len(text) > settings.max_sentences:
        raise RequestError(413, f"{len(text)} sentences: at most {settings.max_sentences} per request")
    longest = max(len(t) for t in text)
    if longest > settings.max_chars:
        raise RequestError(413, f"a sentence of {longest} characters: at most {settings.max_chars}")
    for i, t in enumerate(text):
        if "\n" in t or "\r" in t:
            raise RequestError(400, f"sentence {i} contains a line break: give one sentence per list item")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as e:
            reason = f"sentence {i} is not valid Unicode text ({e.reason} at character {e.start})"
            raise RequestError(400, reason) from None
    beam_size = data.get("beam_size", 5)
    if isinstance(beam_size, bool) or not isinstance(beam_size, int) or not 1 <= beam_size <= settings.max_beam:
        shown = json.dumps(beam_size) if isinstance(beam_size, (int, float)) and len(str(beam_size)) < 20 else "that"
        raise RequestError(400, f"\"beam_size\" must be an integer from 1 to {settings.max_beam}, got {shown}")
    attention = data.get("attention", False)
    if not isinstance(attention, bool):
        raise RequestError(400, "\"attention\" must be true or false")
    cost = sum(len(t) for t in text) * beam_size
    if cost > settings.max_cost:
        raise RequestError(413, f"request cost {cost} (characters x beam_size) is over max_cost={settings.max_cost}: "
                                "send fewer or shorter sentences, or a smaller beam_size")
    return text, beam_size, attention


def empty_result(attention: bool) -> dict:
    """A blank sentence's translation: not decoded, as in attnmt-translate."""
    item = {"translation": ""}
    if attention:
        item["attention"] = {"source": [], "target": [], "weights": [], "layers": [], "heads": []}
    return item


def create_app(backend, settings: ServeSettings, executor=None):
    """The Starlette application serving ``backend``; ``executor``: the one-thread executor the
    backend was loaded in (see :func:`attnmt.deploy.serve_scheduler.decoding_thread`), else a new one."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    from attnmt.deploy.serve_http import AllowedHosts, SecurityHeaders, page_policy, read_body, wait_or_gone
    from attnmt.deploy.serve_scheduler import Job, Scheduler

    scheduler = Scheduler(backend.decode, settings.batch_cost, settings.batch_wait_ms / 1000.0, settings.max_queue,
                          executor)
    page = (Path(__file__).with_name("serve.html")).read_text(encoding="utf-8")
    max_body = 4 * settings.max_sentences * (settings.max_chars + 16) + 1024  # JSON escapes included
    key = settings.key().encode()

    def error(status: int, reason: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": reason}, status_code=status, headers=headers)

    def refused(request: Request) -> JSONResponse | None:
        """401 unless the request carries the API key (when one is set)."""
        if not key:
            return None
        given = request.headers.get("authorization", "")
        if given[:7].lower() == "bearer " and hmac.compare_digest(given[7:].strip().encode(), key):
            return None
        return error(401, "this server needs an API key: send \"Authorization: Bearer KEY\"",
                     {"WWW-Authenticate": "Bearer"})

    async def translate(request: Request):
        if (answer := refused(request)) is not None:
            return answer
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            return error(415, f"Content-Type must be application/json, got {media[:60] or 'none'}")
        try:
            body = await read_body(request, max_body, settings.read_timeout_s)
            lines, beam_size, attention = parse_request(body, settings)
        except RequestError as e:
            return error(e.status, str(e))
        if scheduler.full():
            return error(503, f"the server is busy ({settings.max_queue} requests queued): retry later",
                         {"Retry-After": "1"})
        kept = [i for i, line in enumerate(lines) if line.strip()]
        results = [empty_result(attention) for _ in lines]
        if kept:
            try:
                sources = await asyncio.get_running_loop().run_in_executor(
                    None, backend.encode, [lines[i] for i in kept])
            except Exception as e:  # noqa: BLE001 (this request's text only)
                return error(400, f"the text could not be encoded: {type(e).__name__}: {str(e)[:120]}")
            job = Job(sources, beam_size, attention, asyncio.get_running_loop().create_future())
            scheduler.submit(job)
            outcome = await wait_or_gone(request, job.future, settings.timeout_s)
            if outcome != "done":
                job.cancel()
                if outcome == "timeout":
                    return error(503, f"no translation within timeout_s={settings.timeout_s:g} s: the server is "
                                      "busy, retry later or send less", {"Retry-After": "5"})
                return error(499, "the client closed the connection")  # nobody reads it
            if job.future.exception() is not None:
                e = job.future.exception()
                return error(500, f"decoding failed: {type(e).__name__}: {str(e)[:200]}")
            for i, item in zip(kept, job.future.result()):
                results[i] = item
        reply = {"translations": [r["translation"] for r in results], "beam_size": beam_size}
        if attention:
            reply["attention"] = [r["attention"] for r in results]
        return JSONResponse(reply)

    async def index(request: Request):
        return HTMLResponse(page, headers={"Content-Security-Policy": policy})

    async def health(request: Request):
        return JSONResponse({"status": "ok", "batches": scheduler.batches, "requests": scheduler.requests,
                             "queued": len(scheduler.jobs)})

    async def metadata(request: Request):
        if (answer := refused(request)) is not None:
            return answer
        return JSONResponse({**backend.metadata, "limits": {
            "max_sentences": settings.max_sentences, "max_chars": settings.max_chars, "max_beam": settings.max_beam,
            "max_cost": settings.max_cost}, "api_key": bool(key)})

    async def http_error(request: Request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail).splitlines()[0] if exc.detail else "error", exc.headers)

    async def server_error(request: Request, exc: Exception):
        log.exception("request failed")
        return error(500, f"internal error: {type(exc).__name__}")

    @asynccontextmanager
    async def lifespan(app):
        scheduler.arrived = asyncio.Event()
        task = asyncio.create_task(scheduler.run())
        yield
        task.cancel()
        scheduler.close()

    policy = page_policy(page)
    routes = [
        Route("/", index), Route("/health", health), Route("/metadata", metadata),
        Route("/translate", translate, methods=["POST"]),
    ]
    middleware = [Middleware(SecurityHeaders), Middleware(AllowedHosts, hosts=settings.hosts())]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware,
                    exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.scheduler = scheduler
    return app


def main(argv: list[str] | None = None) -> None:
    from attnmt.utils.cli import run_command, usage_text

    def run(args: ServeSettings) -> None:
        try:
            import starlette  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError:
            raise ConfigError(f"the server needs Starlette and uvicorn: {EXTRA_HINT}") from None
        from attnmt.deploy.serve_http import serve
        from attnmt.deploy.serve_scheduler import decoding_thread

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        args.hosts()  # a bad name stops here, before the model loads
        executor = decoding_thread()
        from attnmt.utils.device import decode_device

        device = str(decode_device(args.device, "device"))  # a device that is not there stops here
        backend = executor.submit(load_backend, args.ckpt, device, args.compute_type).result()
        print(f"attnmt-serve: {backend.metadata['model']} ({backend.kind}, {backend.device}, {backend.compute_type}) "
              f"on http://{args.host}:{args.port}/", file=sys.stderr)
        if args.hosts() == ["*"] and args.host not in LOOPBACK:
            print("attnmt-serve: answering any Host header; set allowed_hosts= to the names clients use",
                  file=sys.stderr)
        serve(create_app(backend, args, executor), args)

    run_command(argv, usage_text(USAGE_HEAD, (ServeSettings,), USAGE_TAIL), (ServeSettings,), "attnmt-serve",
                "attnmt-serve ckpt=RUN_OR_DIR", run)


if __name__ == "__main__":
    main()
