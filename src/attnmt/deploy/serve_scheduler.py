"""Fair, bounded batching for ``attnmt-serve``.

Every request becomes a :class:`Job` (its encoded sentences and settings). One decoding thread
takes batches of sentences, several requests' at once, sized by a token budget rather than by a
count of requests:

- the request with the least work left is served first, and a batch is filled with the work of
  requests sharing its settings (``beam_size``, ``attention``), smallest first, so a large
  request is decoded a batch at a time and a small one arriving meanwhile waits for at most one
  batch, not for the large request;
- a request whose client has gone, or that ran past its time, is dropped before its next batch;
- a batch that fails is decoded again request by request, so only the request at fault fails;
- at most ``max_queue`` requests wait; :meth:`Scheduler.full` tells the server to refuse more.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

log = logging.getLogger(__name__)
_arrivals = itertools.count()


@dataclass(eq=False)
class Job:
    """One request's sentences (source ids, none empty) and how to decode them."""

    sources: list[list[int]]
    beam_size: int
    attention: bool
    future: asyncio.Future
    results: list = field(init=False)
    started: int = 0  # sentences handed to the decoder so far
    finished: int = 0
    cancelled: bool = False
    order: int = field(default_factory=lambda: next(_arrivals))

    def __post_init__(self) -> None:
        self.results = [None] * len(self.sources)

    @property
    def settings(self) -> tuple[int, bool]:
        return self.beam_size, self.attention

    def work_left(self) -> int:
        """Source tokens not yet handed to the decoder, times the beam."""
        return sum(len(s) + 1 for s in self.sources[self.started:]) * self.beam_size

    def cancel(self) -> None:
        self.cancelled = True


def decoding_thread() -> ThreadPoolExecutor:
    """The one thread that runs the model. Load the model in it too: on a CPU, torch ops run from
    a second thread (each with its own OpenMP pool) were 2-3x slower on 2 cores."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="attnmt-decode")


class Scheduler:
    """Decodes the jobs submitted to it with ``decode(sources, beam_size, attention)`` in one worker
    thread; batches hold at most ``batch_cost`` padded source tokens times the beam (always at
    least one sentence)."""

    def __init__(self, decode: Callable, batch_cost: int, wait_s: float, max_queue: int,
                 executor: ThreadPoolExecutor | None = None):
        self.decode, self.batch_cost, self.wait_s, self.max_queue = decode, batch_cost, wait_s, max_queue
        self.jobs: list[Job] = []
        self.executor = executor or decoding_thread()
        self.arrived: asyncio.Event | None = None
        self.batches = self.requests = 0  # for /health: how much batching happened

    def full(self) -> bool:
        return len(self.jobs) >= self.max_queue

    def submit(self, job: Job) -> None:
        self.jobs.append(job)
        self.arrived.set()

    def next_batch(self) -> list[tuple[Job, int]]:
        """(job, sentence index) pairs to decode together; marks them started."""
        first = min(self.jobs, key=lambda j: (j.work_left(), j.order))
        beam = first.beam_size
        batch: list[tuple[Job, int]] = []
        longest = 0
        same = [j for j in self.jobs if j.settings == first.settings]
        for job in sorted(same, key=lambda j: (j.work_left(), j.order)):
            while job.started < len(job.sources):
                n = len(job.sources[job.started]) + 1  # with </s>
                if batch and max(longest, n) * (len(batch) + 1) * beam > self.batch_cost:
                    return batch
                batch.append((job, job.started))
                job.started += 1
                longest = max(longest, n)
        return batch

    async def run(self) -> None:
        self.arrived = self.arrived or asyncio.Event()
        loop = asyncio.get_running_loop()
        waited = False
        while True:
            self.jobs = [j for j in self.jobs if not (j.cancelled or j.future.done())]
            if not self.jobs:
                self.arrived.clear()
                await self.arrived.wait()
                continue
            if not waited and self.wait_s > 0 and sum(j.work_left() for j in self.jobs) < self.batch_cost:
                # Let requests arriving together join the batch: at an idle server, and after each
                # batch, when the clients just answered send their next requests.
                await asyncio.sleep(self.wait_s)
                waited = True
                continue
            waited = False
            batch = self.next_batch()
            parts: dict[Job, list[int]] = {}
            for job, i in batch:
                parts.setdefault(job, []).append(i)
            await self.decode_parts(loop, parts)

    async def decode_parts(self, loop, parts: dict[Job, list[int]]) -> None:
        """Decode the sentences of ``parts`` as one batch; when that fails, each job's alone."""
        job0 = next(iter(parts))
        beam_size, attention = job0.settings
        try:
            sources = [job.sources[i] for job, idx in parts.items() for i in idx]
            results = await loop.run_in_executor(self.executor, self.decode, sources, beam_size, attention)
        except Exception as e:  # noqa: BLE001 (retried below, then passed on to the request at fault)
            if len(parts) == 1:
                log.warning("decoding failed for one request: %s: %s", type(e).__name__, e)
                if not (job0.cancelled or job0.future.done()):  # nobody waits on a cancelled one
                    job0.future.set_exception(e)
                job0.cancel()
                return
            for job, idx in parts.items():
                await self.decode_parts(loop, {job: idx})
            return
        self.batches += 1
        it = iter(results)
        for job, idx in parts.items():
            for i in idx:
                job.results[i] = next(it)
            job.finished += len(idx)
            if job.finished == len(job.sources) and not job.future.done():
                self.requests += 1
                job.future.set_result(job.results)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
