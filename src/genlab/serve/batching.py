"""Dynamic batching: one worker thread per model takes jobs from a bounded queue and runs them
one at a time, except that consecutive generate jobs with the same key (model settings) are
grouped, up to `max_batch` images, into one forward pass.

Why grouping gives each request what it would get alone: a request's randomness is its own
torch.Generator(seed), and for the models grouped here (see genlab.sampling.noise_decoder) all
that generator draws can be drawn first: the latent / initial noise, and for a diffusion sampler
with stochastic steps (DDPM, DDIM or DPM-Solver++ at eta > 0) each step's noise too, in the order
`model.sample` draws it (for DDPM's 1,000 steps about 3 MB per 28x28 image). The noises (and
labels) are concatenated, decoded in one call, and the result is split again. Models whose sampling draws as it goes, depending on what it drew
(PixelCNN, GraphRNN, text), cannot share a generator between requests without changing their
answers, so they get key None and run alone (text has its own grouping, `text_group`).

Inference runs in the worker, never on the event loop: the endpoint awaits the job's Future.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

import torch

from genlab.images import resize_uint8
from genlab.sampling import NoiseDecoder
from genlab.seed import make_generator

log = logging.getLogger("genlab")


class QueueFull(Exception):
    """The model's queue holds `queue` jobs already: the caller should retry later (503)."""


@dataclass(eq=False)
class Job:
    """Work for one request. `fn(payloads) -> results` runs in the worker on the payloads of
    every job in its group (one per job, in order); jobs group only when their keys are equal
    and not None. `size` counts against max_batch. `grad`: run with autograd (apply's latent
    optimisation and reconstruction guidance differentiate through the model), else under
    torch.inference_mode()."""

    fn: Callable[[list[Any]], list[Any]]
    payload: Any = None
    key: Hashable | None = None
    size: int = 1
    grad: bool = False
    future: Future = field(default_factory=Future)


class Batcher:
    """A bounded queue and one worker thread for one model. The worker is a daemon thread: it
    lives as long as the process."""

    def __init__(self, name: str, *, max_batch: int = 16, queue_size: int = 64, wait_s: float = 0.005,
                 on_batch: Callable[[str, int], None] | None = None):
        self.name, self.max_batch, self.wait_s = name, max_batch, wait_s
        self.on_batch = on_batch
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=queue_size)
        self._held: Job | None = None  # taken from the queue while grouping but not groupable: runs next
        self._thread = threading.Thread(target=self._loop, name=f"genlab-serve-{name}", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Future:
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"model {self.name} has {self._queue.maxsize} requests waiting") from None
        return job.future

    def depth(self) -> int:
        """Jobs waiting (not yet running)."""
        return self._queue.qsize() + (self._held is not None)

    # ------------------------------------------------------------------ worker
    def _next(self) -> Job:
        if self._held is not None:
            job, self._held = self._held, None
            return job
        return self._queue.get()

    def _group(self, first: Job) -> list[Job]:
        """`first` plus the jobs that arrive within wait_s with the same key, up to max_batch images.
        The first job that cannot join ends the wait and runs next (order is kept)."""
        group, size = [first], first.size
        deadline = time.monotonic() + self.wait_s
        while first.key is not None and size < self.max_batch:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job.key != first.key or size + job.size > self.max_batch:
                self._held = job
                break
            group.append(job)
            size += job.size
        return group

    def _loop(self) -> None:
        while True:
            first = self._next()
            # a job whose request timed out or went away is cancelled: skip it
            group = [j for j in self._group(first) if j.future.set_running_or_notify_cancel()]
            if not group:
                continue
            try:
                with torch.inference_mode(mode=not group[0].grad):
                    results = group[0].fn([j.payload for j in group])
            except Exception as e:  # every error goes back to its request(s); the worker carries on
                for j in group:
                    j.future.set_exception(e)
                continue
            if self.on_batch is not None:
                self.on_batch(self.name, sum(j.size for j in group))
            for j, r in zip(group, results):
                j.future.set_result(r)


# --------------------------------------------------------------------------- generate jobs


@dataclass
class Draw:
    """One generate request for a model that a NoiseDecoder serves."""
    n: int
    seed: int
    labels: torch.Tensor | None  # (n,) as genlab.sampling.sample_labels gives them
    decoder: NoiseDecoder


def draw_group(run, draws: list[Draw]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Several requests' samples from one decode call -> per request (uint8 (n, C, H, W) at the
    data's native size, labels or None), each equal to run.sample(n, seed=seed, label=...)."""
    noise = torch.cat([d.decoder.noise(d.n, make_generator(d.seed)) for d in draws])  # each from its own seed
    labels = None if draws[0].labels is None else torch.cat([d.labels for d in draws])
    x = draws[0].decoder.decode(noise, labels)  # one forward pass for all (same key = same settings)
    images = resize_uint8(run.pipeline.to_uint8(x), tuple(run.meta["native_size"]))
    out, i = [], 0
    for d in draws:
        out.append((images[i:i + d.n], d.labels))
        i += d.n
    return out


# --------------------------------------------------------------------------- text jobs


@dataclass
class TextRow:
    """One text request that can share forward passes: its encoded prompt (grouped by length:
    the job key), options and seed. `on_piece(piece)` gets each piece as it comes (streaming);
    `stopped()` true ends the row early (its client left)."""
    ids: list[int]
    max_tokens: int
    sampling: Any  # genlab.models.autoregressive.generation.SamplingConfig
    seed: int
    stop: str | None
    on_piece: Callable[[str], None] | None = None
    stopped: Callable[[], bool] = lambda: False


def text_group(run, rows: list[TextRow]) -> list[str]:
    """Several text requests with equal-length prompts, one forward pass per token step for all
    (generation.generate_rows) -> each one's continuation, equal to "".join(run.generate(...)) for
    it alone: each row samples with its own options and torch.Generator(seed), and ends at its own
    stop string or max_tokens (then it stays in the batch, masked, until every row is done)."""
    from genlab.models.autoregressive.generation import TextPieces, generate_rows

    out = [TextPieces(run.tokenizer, r.stop) for r in rows]
    texts: list[list[str]] = [[] for _ in rows]
    done = [False] * len(rows)

    def emit(i: int, pieces: list[str]) -> None:
        for piece in pieces:
            if rows[i].stopped():
                done[i] = True
                return
            texts[i].append(piece)
            if rows[i].on_piece is not None:
                rows[i].on_piece(piece)

    steps = generate_rows(run.model, torch.tensor([r.ids for r in rows]), [r.max_tokens for r in rows],
                          [r.sampling for r in rows], [make_generator(r.seed) for r in rows], done=done)
    for toks in steps:
        for i, tok in enumerate(toks):
            if tok is None:
                continue
            pieces = out[i].add(tok)
            if not out[i].done and len(out[i].new) == rows[i].max_tokens:
                pieces += out[i].finish()
            emit(i, pieces)
            done[i] = done[i] or out[i].done or rows[i].stopped()
    return ["".join(t) for t in texts]
