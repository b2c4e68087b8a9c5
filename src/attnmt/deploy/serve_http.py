"""HTTP plumbing of ``attnmt-serve`` that bounds what one client can hold: reading a body within a
size and a time, noticing a client that has gone, security headers, allowed hosts, and uvicorn
run with a deadline for request headers and a bound on open connections.

Starlette and uvicorn are imported inside the functions: the serve extra is optional.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re

log = logging.getLogger(__name__)


class RequestError(Exception):
    """A bad request: HTTP ``status`` and a one-line reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


async def read_body(request, limit: int, timeout_s: float) -> bytes:
    """The request's body: at most ``limit`` bytes (else 413), arrived within ``timeout_s`` (else 408)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body of {declared[:20]} bytes: at most {limit}")

    async def read() -> bytes:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise RequestError(413, f"request body over {limit} bytes")
        return bytes(body)

    try:
        return await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:
        raise RequestError(408, f"the request body did not arrive within {timeout_s:g} s") from None


async def wait_or_gone(request, future: asyncio.Future, timeout_s: float) -> str:
    """Wait for ``future``: ``"done"``, ``"gone"`` when the client disconnects first, or ``"timeout"``."""

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass  # a server sends nothing more once the body is read, until the client leaves

    watcher = asyncio.ensure_future(gone())
    try:
        done, _ = await asyncio.wait({future, watcher}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if future in done:
        return "done"
    return "gone" if watcher in done else "timeout"


class SecurityHeaders:
    """ASGI middleware: headers that stop other sites framing or sniffing our responses."""

    HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
               (b"referrer-policy", b"no-referrer"), (b"cache-control", b"no-store")]

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class AllowedHosts:
    """ASGI middleware: answer only requests whose Host header names this server (a page on
    another site cannot reach a loopback server through DNS rebinding); others get a JSON 400."""

    def __init__(self, app, hosts: list[str]):
        self.app, self.hosts = app, {h.lower().strip("[]") for h in hosts}

    def allowed(self, host: str) -> bool:
        if "*" in self.hosts:
            return True
        host = host.lower()
        if host.startswith("["):  # [::1]:8000
            name = host[1:].split("]")[0]
        else:
            name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        return name in self.hosts or any(h.startswith("*.") and name.endswith(h[1:]) for h in self.hosts)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        if self.allowed(host):
            return await self.app(scope, receive, send)
        from starlette.responses import JSONResponse

        reason = f"Host {host[:60]!r} is not served here: the server answers {', '.join(sorted(self.hosts))}"
        await JSONResponse({"error": reason}, status_code=400)(scope, receive, send)


def page_policy(page: str) -> str:
    """A Content-Security-Policy for ``page``: its own inline scripts (by hash) and nothing else
    runs, it talks only to this server, and no other site may frame it."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in re.findall(r"<script>(.*?)</script>", page, re.DOTALL)
    )
    return (f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; connect-src 'self'; "
            "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def guarded_protocol(timeout_s: float, max_connections: int):
    """uvicorn's h11 protocol with two guards against clients that hold connections without
    sending requests: a connection whose request line and headers have not all arrived
    ``timeout_s`` after it opened (or after its last response) is closed, and when a new
    connection would pass ``max_connections``, the longest-waiting connection that is not in a
    request is closed to make room (the new one is, if there is none)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedProtocol(H11Protocol):
        header_timer: asyncio.TimerHandle | None = None
        since = 0.0

        def arm(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
            self.since = self.loop.time()
            self.header_timer = self.loop.call_later(timeout_s, self.overdue)

        def waiting(self) -> bool:
            """Between requests, or part-way through a request's headers."""
            idle = self.cycle is None or self.cycle.response_complete
            return idle and self.conn.their_state is h11.IDLE and not self.transport.is_closing()

        def overdue(self) -> None:
            if self.waiting():
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.arm()
            if len(self.connections) > max_connections:
                others = [c for c in self.connections if c is not self and getattr(c, "waiting", None) and c.waiting()]
                victim = min(others, key=lambda c: c.since) if others else self
                victim.transport.close()
                victim.connections.discard(victim)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self.arm()

        def connection_lost(self, exc) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
            super().connection_lost(exc)

    return GuardedProtocol


def raise_open_file_limit(wanted: int) -> None:
    """Lift the soft limit on open files towards the hard one, so ``wanted`` connections fit."""
    try:
        import resource
    except ImportError:  # not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, wanted + 256)
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted + 64:
        log.warning("open-file limit %d is close to max_connections=%d: lower max_connections or raise "
                    "the limit (ulimit -n)", target, wanted)


def serve(app, settings) -> None:
    """Run ``app`` under uvicorn with attnmt-serve's connection limits."""
    import uvicorn

    raise_open_file_limit(settings.max_connections)
    uvicorn.Server(uvicorn_config(app, settings)).run()


def uvicorn_config(app, settings):
    import uvicorn

    return uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level="warning",
        http=guarded_protocol(settings.read_timeout_s, settings.max_connections),
        timeout_keep_alive=5, h11_max_incomplete_event_size=16 * 1024,  # headers of at most 16 KiB
    )
