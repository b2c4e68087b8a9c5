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

Requests that arrive within ``batch_wait_ms`` of each other are decoded as one batch (one queue,
one decoding thread): many small concurrent requests cost about one batched decode, not one
decode each. A malformed, empty or oversized request gets a 4xx with a one-line reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from attnmt.errors import ConfigError
from attnmt.utils.schema import Ge, Le

log = logging.getLogger(__name__)
EXTRA_HINT = "pip install 'attnmt[serve]' (starlette and uvicorn)"

USAGE = """usage: attnmt-serve ckpt=RUN_OR_DIR [host=127.0.0.1] [port=8000] [key=value ...]

Serve a trained model over HTTP: a page to translate sentences and see their attention
(GET /), a JSON API (POST /translate), GET /health and GET /metadata.

keys (defaults in brackets):
  ckpt=PATH          a .ckpt file, a training run's folder or an attnmt-export folder (required)
  host=HOST          address to listen on [127.0.0.1]
  port=N             port, 1..65535 [8000]
  max_sentences=N    most sentences in one request, >= 1 [64]
  max_chars=N        longest sentence in characters, >= 1 [1000]
  max_beam=N         largest beam_size a request may ask for, >= 1 [16]
  batch_wait_ms=MS   how long the first waiting request waits for others to batch with, >= 0 [5]

POST /translate takes {"text": ["...", ...], "beam_size": 5, "attention": false}. Needs the
serve extra: pip install 'attnmt[serve]'. A bad key or value is one line on stderr
(error: ...) and exit status 2.
"""


@dataclass
class ServeSettings:
    """The keys of ``attnmt-serve``."""

    ckpt: str  # a .ckpt file, a training run's output folder or an attnmt-export folder
    host: str = "127.0.0.1"
    port: Annotated[int, Ge(1), Le(65535)] = 8000
    max_sentences: Annotated[int, Ge(1)] = 64
    max_chars: Annotated[int, Ge(1)] = 1000
    max_beam: Annotated[int, Ge(1)] = 16
    batch_wait_ms: Annotated[float, Ge(0)] = 5.0


class RequestError(Exception):
    """A bad request: HTTP ``status`` and a one-line reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


# -- the model behind the server -----------------------------------------------------------------
def word_attention(tokenizer, src_ids: list[int], tgt_ids: list[int], weights) -> tuple[list[str], list[str], list]:
    """Source words, target words and ``weights`` ``(..., T + 1, S)`` merged to words
    ``(..., T_words, S_words)``, each row renormalised to sum to 1."""
    import numpy as np

    from attnmt.alignment import merge_to_words, word_ids, words

    src_pieces, tgt_pieces = tokenizer.src_pieces(src_ids), tokenizer.tgt_pieces(tgt_ids)
    rows, cols = word_ids(tgt_pieces + ["</s>"]), word_ids(src_pieces)
    weights = np.asarray(weights, dtype=np.float64)
    lead = weights.shape[:-2]
    flat = weights.reshape(-1, *weights.shape[-2:])[:, : len(rows), : len(cols)]
    merged = np.stack([merge_to_words(w, rows, cols) for w in flat]) if len(flat) else flat  # (N, Tw, Sw)
    merged = merged / np.maximum(merged.sum(-1, keepdims=True), 1e-12)
    merged = merged.reshape(*lead, *merged.shape[-2:])
    return words(src_pieces), words(tgt_pieces), np.round(merged, 5).tolist()


class TorchBackend:
    """attnmt's own search; attention of every layer and head (teacher-forced on the output)."""

    def __init__(self, ckpt: str):
        from attnmt.checkpoint import load_for_decoding

        self.model, self.tokenizer, config, path = load_for_decoding(ckpt)
        self.max_len = config["data"].get("max_len", 128)
        name = config["model"]["_target_"].rsplit(".", 1)[-1]
        self.metadata = {
            "model": name, "backend": "pytorch", "checkpoint": str(path),
            "languages": {"source": config["data"].get("src_lang"), "target": config["data"].get("tgt_lang")},
            "attention": "cross-attention, every layer and head",
        }

    def translate(self, lines: list[str], beam_size: int, attention: bool) -> list[dict]:
        import torch

        from attnmt.data.datamodule import encode_for_eval, pad
        from attnmt.data.tokenizer import PAD_ID
        from attnmt.search import forced_attention
        from attnmt.translate import DecodeSettings, translate_dataset

        dataset = encode_for_eval(self.tokenizer, lines, max_len=self.max_len)
        hyps = [
            h[0].tokens
            for h in translate_dataset(self.model, dataset, DecodeSettings(beam_size=beam_size), progress=False)
        ]
        out = [{"translation": t} for t in self.tokenizer.decode_tgt(hyps)]
        if attention:
            with torch.inference_mode():
                src = pad(dataset.src)
                cross = forced_attention(self.model, src, src != PAD_ID, hyps)[0]["cross"].float()  # (B, L, H, T, S)
            for b, item in enumerate(out):
                w = cross[b, :, :, : len(hyps[b]) + 1, : len(dataset.src[b])]  # (L, H, T+1, S)
                w = torch.cat([w.mean(1, keepdim=True), w], dim=1)  # head 0: the mean of the heads
                s, t, m = word_attention(self.tokenizer, dataset.src[b], hyps[b], w.numpy())
                L, H = w.shape[0], w.shape[1] - 1
                item["attention"] = {
                    "source": s, "target": t, "weights": m,
                    "layers": [f"layer {i + 1}" for i in range(L)],
                    "heads": ["mean of heads"] + [f"head {h + 1}" for h in range(H)],
                }
        return out


class ExportBackend:
    """CTranslate2; one attention matrix (the last layer, averaged over heads)."""

    def __init__(self, path: str):
        from attnmt.ct2 import ExportedModel

        self.exported = ExportedModel(path)
        self.tokenizer = self.exported.tokenizer
        meta = self.exported.meta
        self.metadata = {
            "model": meta["model"]["_target_"].rsplit(".", 1)[-1], "backend": "ctranslate2",
            "checkpoint": meta["source_checkpoint"],
            "export": str(Path(path)), "quantization": meta["quantization"], "languages": meta["languages"],
            "attention": meta["attention"],
        }

    def translate(self, lines: list[str], beam_size: int, attention: bool) -> list[dict]:
        from attnmt.data.datamodule import encode_for_eval
        from attnmt.translate import DecodeSettings

        dataset = encode_for_eval(self.tokenizer, lines, max_len=self.exported.max_len)
        found, attn = self.exported.translate_dataset(dataset, DecodeSettings(beam_size=beam_size), attention)
        hyps = [h[0].tokens for h in found]
        out = [{"translation": t} for t in self.tokenizer.decode_tgt(hyps)]
        if attention:
            for b, item in enumerate(out):
                s, t, m = word_attention(self.tokenizer, dataset.src[b], hyps[b], attn[b][0][None, None])
                item["attention"] = {"source": s, "target": t, "weights": m,
                                     "layers": ["last layer"], "heads": ["mean of heads"]}
        return out


def load_backend(ckpt: str):
    from attnmt.export import is_exported

    return ExportBackend(ckpt) if is_exported(ckpt) else TorchBackend(ckpt)


def translate_with_blanks(backend, lines: list[str], beam_size: int, attention: bool) -> list[dict]:
    """Blank lines get an empty translation without being decoded, as in attnmt-translate."""
    kept = [i for i, line in enumerate(lines) if line.strip()]
    empty = {"translation": ""}
    if attention:
        empty["attention"] = {"source": [], "target": [], "weights": [], "layers": [], "heads": []}
    out = [dict(empty) for _ in lines]
    if kept:
        for i, item in zip(kept, backend.translate([lines[i] for i in kept], beam_size, attention)):
            out[i] = item
    return out


# -- batching ------------------------------------------------------------------------------------
class Batcher:
    """Collects requests for ``wait_s`` after the first one arrives and decodes those that share
    their settings as one batch, in one worker thread (the event loop keeps accepting)."""

    def __init__(self, backend, wait_s: float, max_sentences: int):
        self.backend, self.wait_s, self.max_sentences = backend, wait_s, max_sentences
        self.queue: asyncio.Queue | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attnmt-decode")
        self.batches = self.requests = 0  # for /health: how much batching happened

    async def submit(self, lines: list[str], beam_size: int, attention: bool) -> list[dict]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((lines, beam_size, attention, future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + self.wait_s
            while sum(len(i[0]) for i in items) < self.max_sentences:
                timeout = deadline - loop.time()
                try:
                    items.append(
                        self.queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(self.queue.get(), timeout)
                    )
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
            groups: dict[tuple, list] = {}
            for item in items:
                groups.setdefault((item[1], item[2]), []).append(item)
            for (beam_size, attention), group in groups.items():
                lines = [line for item in group for line in item[0]]
                try:
                    results = await loop.run_in_executor(
                        self.executor, translate_with_blanks, self.backend, lines, beam_size, attention
                    )
                except Exception as e:  # a decoding failure answers these requests, the server stays up
                    log.exception("decoding failed")
                    for item in group:
                        if not item[3].done():
                            item[3].set_exception(e)
                    continue
                self.batches += 1
                self.requests += len(group)
                start = 0
                for item in group:
                    if not item[3].done():
                        item[3].set_result(results[start : start + len(item[0])])
                    start += len(item[0])


# -- HTTP ----------------------------------------------------------------------------------------
def parse_request(body: bytes, settings: ServeSettings) -> tuple[list[str], int, bool]:
    """The sentences, beam size and attention flag of a ``/translate`` body, or a RequestError."""
    if not body.strip():
        raise RequestError(400, "empty request body: send JSON {\"text\": [\"...\"]}")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(400, f"the body is not JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise RequestError(400, "the body must be a JSON object {\"text\": [\"...\"]}")
    unknown = sorted(set(data) - {"text", "beam_size", "attention"})
    if unknown:
        raise RequestError(400, f"unknown key {unknown[0]!r}: keys are text, beam_size, attention")
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
    if any("\n" in t or "\r" in t for t in text):
        raise RequestError(400, "a sentence contains a line break: give one sentence per list item")
    beam_size = data.get("beam_size", 5)
    if isinstance(beam_size, bool) or not isinstance(beam_size, int) or not 1 <= beam_size <= settings.max_beam:
        raise RequestError(
            400, f"\"beam_size\" must be an integer from 1 to {settings.max_beam}, got {json.dumps(beam_size)}"
        )
    attention = data.get("attention", False)
    if not isinstance(attention, bool):
        raise RequestError(400, f"\"attention\" must be true or false, got {json.dumps(attention)}")
    return text, beam_size, attention


def create_app(backend, settings: ServeSettings):
    """The Starlette application serving ``backend``."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    batcher = Batcher(backend, settings.batch_wait_ms / 1000.0, settings.max_sentences)
    page = (Path(__file__).with_name("serve.html")).read_text(encoding="utf-8")
    max_body = 4 * settings.max_sentences * (settings.max_chars + 16) + 1024  # JSON escapes included

    def error(status: int, reason: str) -> JSONResponse:
        return JSONResponse({"error": reason}, status_code=status)

    async def translate(request: Request):
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_body:
            return error(413, f"request body of {declared} bytes: at most {max_body}")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body:
                return error(413, f"request body over {max_body} bytes")
        try:
            lines, beam_size, attention = parse_request(body, settings)
        except RequestError as e:
            return error(e.status, str(e))
        try:
            results = await batcher.submit(lines, beam_size, attention)
        except Exception as e:  # noqa: BLE001 (the batcher passes on any decoding failure)
            return error(500, f"decoding failed: {type(e).__name__}: {str(e)[:200]}")
        reply = {"translations": [r["translation"] for r in results], "beam_size": beam_size}
        if attention:
            reply["attention"] = [r["attention"] for r in results]
        return JSONResponse(reply)

    async def index(request: Request):
        return HTMLResponse(page)

    async def health(request: Request):
        return JSONResponse({"status": "ok", "batches": batcher.batches, "requests": batcher.requests})

    async def metadata(request: Request):
        return JSONResponse({**backend.metadata, "limits": {
            "max_sentences": settings.max_sentences, "max_chars": settings.max_chars, "max_beam": settings.max_beam}})

    @asynccontextmanager
    async def lifespan(app):
        batcher.queue = asyncio.Queue()
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()
        batcher.executor.shutdown(wait=False)

    routes = [
        Route("/", index), Route("/health", health), Route("/metadata", metadata),
        Route("/translate", translate, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def main(argv: list[str] | None = None) -> None:
    from attnmt.utils.cli import run_command

    def run(args: ServeSettings) -> None:
        try:
            import starlette  # noqa: F401
            import uvicorn
        except ImportError:
            raise ConfigError(f"the server needs Starlette and uvicorn: {EXTRA_HINT}") from None
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        backend = load_backend(args.ckpt)
        print(f"attnmt-serve: {backend.metadata['model']} on http://{args.host}:{args.port}/", file=sys.stderr)
        uvicorn.run(create_app(backend, args), host=args.host, port=args.port, log_level="warning")

    run_command(argv, USAGE, (ServeSettings,), "attnmt-serve", "attnmt-serve ckpt=RUN_OR_DIR", run)


if __name__ == "__main__":
    main()
