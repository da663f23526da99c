"""Prometheus text exposition (format 0.0.4) of the server's counters, without a client library:
requests by route and status, request latency and batch sizes as histograms, queue depth as a
gauge read when /metrics is scraped.

    m = Metrics()
    m.request("/v1/generate", 200, 0.12)
    m.batch("cvae", 12)
    text = m.render({"cvae": 3})
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Histogram:
    """Cumulative-bucket histogram of one label set: counts per upper bound, sum and count."""

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def lines(self, name: str, labels: str) -> list[str]:
        out, total = [], 0
        for bound, c in zip((*self.bounds, "+Inf"), self.counts):
            total += c
            out.append(f'{name}_bucket{{{labels},le="{bound}"}} {total}')
        return out + [f"{name}_sum{{{labels}}} {self.sum:.6g}", f"{name}_count{{{labels}}} {total}"]


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Thread-safe: requests are counted on the event loop, batches in the model workers."""

    def __init__(self):
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, int], int] = defaultdict(int)
        self._latency: dict[str, Histogram] = {}
        self._batches: dict[str, Histogram] = {}

    def request(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests[(route, status)] += 1
            self._latency.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch(self, model: str, size: int) -> None:
        """One forward pass of `model` over `size` images (or texts, graphs) for its requests."""
        with self._lock:
            self._batches.setdefault(model, Histogram(BATCH_BUCKETS)).observe(size)

    def render(self, queue_depth: dict[str, int]) -> str:
        with self._lock:
            lines = ["# HELP genlab_requests_total HTTP requests by route and status.",
                     "# TYPE genlab_requests_total counter"]
            lines += [f'genlab_requests_total{{route="{_label(r)}",status="{s}"}} {n}'
                      for (r, s), n in sorted(self._requests.items())]
            lines += ["# HELP genlab_request_seconds Time from a request's arrival to the end of its response, by route.",
                      "# TYPE genlab_request_seconds histogram"]
            for route, h in sorted(self._latency.items()):
                lines += h.lines("genlab_request_seconds", f'route="{_label(route)}"')
            lines += ["# HELP genlab_queue_depth Requests waiting for a model's worker.",
                      "# TYPE genlab_queue_depth gauge"]
            lines += [f'genlab_queue_depth{{model="{_label(m)}"}} {d}' for m, d in sorted(queue_depth.items())]
            lines += ["# HELP genlab_batch_size Items (images, texts, graphs) per forward pass of a model's "
                      "worker; fewer passes than requests means requests shared passes.",
                      "# TYPE genlab_batch_size histogram"]
            for model, h in sorted(self._batches.items()):
                lines += h.lines("genlab_batch_size", f'model="{_label(model)}"')
        return "\n".join(lines) + "\n"
