"""Load test of `genlab serve` on loopback: latency and throughput with and without batching.

    .venv/bin/python benchmarks/serve.py [--image-run DIR] [--text-run DIR] [--levels 1 8 32]

Without --image-run/--text-run it first trains two small runs (cvae-mnist and
gpt-shakespeare-cpu, a few hundred steps each) into benchmarks/runs/. Then, for the server
started with `--max-batch 32` (batching) and `--max-batch 1` (none), it sends image requests
(`POST /v1/generate`, n=1, a new seed each) and text requests (`POST /v1/text/generate`,
32 tokens) at each concurrency level and records p50/p99 latency, requests/s, the status of
every request and the server's memory (VmRSS) before and after. A last part overloads a server
with a small queue to count 503s and check it still answers afterwards.

The server runs pinned to core 0 with one thread (`taskset -c 0`, OMP_NUM_THREADS=1, --threads 1),
the client (this process) on core 1, so the two do not take each other's core; nothing else
should run meanwhile. Results: benchmarks/results/serve.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import RUNS, machine_lines, pinned_command, write_results

from genlab.bench import machine_info

PROMPT = "ROMEO:"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    """`genlab serve` in a child process pinned to core 0."""

    def __init__(self, runs: list[Path], max_batch: int, queue: int):
        self.port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = ["taskset", "-c", "0", sys.executable, "-m", "genlab", "serve", *map(str, runs), "--port",
               str(self.port), "--max-batch", str(max_batch), "--queue", str(queue), "--threads", "1"]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.url = f"http://127.0.0.1:{self.port}"
        import httpx

        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"genlab serve exited: {self.proc.stderr.read()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("genlab serve did not answer /healthz within 120 s")

    def alive(self) -> bool:
        import httpx

        try:
            return httpx.get(self.url + "/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def load(url: str, route: str, bodies: list[dict], concurrency: int) -> dict:
    """Send `bodies` with `concurrency` client threads; latency of each, statuses, throughput.
    The client is the standard library's http.client with a new connection per request, as curl
    does: on a kept-alive connection every request after the first stalls about 40 ms here (a
    delayed-ACK interaction between the client and uvicorn's writes, seen with httpx too), which
    would measure the TCP stack, not the server."""
    import http.client
    from urllib.parse import urlsplit

    host, port = urlsplit(url).hostname, urlsplit(url).port
    lat: list[float] = []
    status: dict[int, int] = {}
    lock = threading.Lock()
    it = iter(bodies)

    def worker() -> None:
        while True:
            with lock:
                body = next(it, None)
            if body is None:
                return
            t0 = time.perf_counter()
            conn = http.client.HTTPConnection(host, port, timeout=300)
            try:
                conn.request("POST", route, body=json.dumps(body).encode(),
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                code = resp.status
            except (OSError, http.client.HTTPException):
                code = -1  # connection failed: a lost request
            finally:
                conn.close()
            dt = time.perf_counter() - t0
            with lock:
                status[code] = status.get(code, 0) + 1
                if code == 200:
                    lat.append(dt)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()
    q = (lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan"))
    return {"concurrency": concurrency, "requests": len(bodies), "status": status, "wall_s": wall,
            "req_per_s": status.get(200, 0) / wall, "p50_ms": 1000 * q(0.50), "p99_ms": 1000 * q(0.99),
            "mean_ms": 1000 * statistics.fmean(lat) if lat else float("nan")}


def prepare_runs(a: argparse.Namespace) -> tuple[Path, Path]:
    import genlab

    image, text = a.image_run, a.text_run
    if image is None:
        image = RUNS / "serve-cvae"
        if not (image / "checkpoints").is_dir():
            genlab.train("cvae-mnist", image, steps=a.train_steps, threads=1)
    if text is None:
        text = RUNS / "serve-gpt"
        if not (text / "checkpoints").is_dir():
            genlab.train("gpt-shakespeare-cpu", text, steps=a.train_steps, threads=1)
    return Path(image), Path(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image-run", type=Path, help="a trained image run (default: train cvae-mnist)")
    ap.add_argument("--text-run", type=Path, help="a trained text run (default: train gpt-shakespeare-cpu)")
    ap.add_argument("--train-steps", type=int, default=300, help="steps of the runs trained when none is given")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32], help="client concurrency levels")
    ap.add_argument("--per-level", type=int, default=4, help="requests per client thread at each level (min 32)")
    ap.add_argument("--tokens", type=int, default=32, help="tokens per text request")
    a = ap.parse_args()

    image, text = prepare_runs(a)
    os.sched_setaffinity(0, {1})  # the client on core 1; the server gets core 0
    import torch

    torch.set_num_threads(1)
    machine = machine_info()
    rows, memory = [], {}
    for batching, max_batch in (("on", 32), ("off", 1)):
        srv = Server([image, text], max_batch=max_batch, queue=256)
        try:
            memory[batching] = {"before_mb": rss_mb(srv.proc.pid)}
            for level in a.levels:
                n = max(32, a.per_level * level)
                img = [{"model": image.name, "n": 1, "seed": i, "format": "png"} for i in range(n)]
                r = load(srv.url, "/v1/generate", img, level)
                rows.append({"kind": "image", "batching": batching, **r})
                print(f"image batching={batching} c={level}: {r['req_per_s']:.1f} req/s, p50 {r['p50_ms']:.0f} ms, "
                      f"p99 {r['p99_ms']:.0f} ms, {r['status']}", file=sys.stderr)
                txt = [{"model": text.name, "prompt": PROMPT, "max_tokens": a.tokens, "seed": i}
                       for i in range(max(32, level))]
                r = load(srv.url, "/v1/text/generate", txt, level)
                rows.append({"kind": "text", "batching": batching, **r})
                print(f"text  batching={batching} c={level}: {r['req_per_s']:.2f} req/s, p50 {r['p50_ms']:.0f} ms, "
                      f"{r['status']}", file=sys.stderr)
            memory[batching]["after_mb"] = rss_mb(srv.proc.pid)
        finally:
            srv.stop()

    # overload: 64 concurrent clients against a queue of 8 -> 503s with Retry-After, no crash
    srv = Server([image, text], max_batch=32, queue=8)
    try:
        bodies = [{"model": image.name, "n": 16, "seed": i, "format": "png"} for i in range(256)]
        over = load(srv.url, "/v1/generate", bodies, 64)
        over["alive_after"] = srv.alive()
    finally:
        srv.stop()

    def speedup(kind: str, batching: str) -> float:
        rate = {r["concurrency"]: r["req_per_s"] for r in rows if r["kind"] == kind and r["batching"] == batching}
        return rate[max(rate)] / rate[min(rate)]

    data = {"machine": machine, "image_run": str(image), "text_run": str(text), "rows": rows, "memory": memory,
            "overload": over, "speedup_image_batching": speedup("image", "on"),
            "speedup_image_no_batching": speedup("image", "off")}
    md = ["# `genlab serve` under load (loopback)\n",
          f"Command: `{pinned_command()}`. The server runs "
          "`genlab serve IMAGE_RUN TEXT_RUN --threads 1` under `taskset -c 0` with OMP_NUM_THREADS=1; the client "
          "threads run on core 1. Image requests: `POST /v1/generate` n=1, PNG, a new seed each; text requests: "
          f"`POST /v1/text/generate`, prompt {PROMPT!r}, {a.tokens} tokens.\n",
          machine_lines(machine),
          f"- image run: `{image}` (cvae-mnist), text run: `{text}` (gpt-shakespeare-cpu)\n",
          "| kind | batching | concurrency | requests | req/s | p50 ms | p99 ms | statuses |",
          "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['kind']} | {r['batching']} | {r['concurrency']} | {r['requests']} | {r['req_per_s']:.2f} | "
                  f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {json.dumps(r['status'])} |")
    md += ["",
           f"Image throughput at concurrency {max(a.levels)} over concurrency {min(a.levels)}: "
           f"**{data['speedup_image_batching']:.1f}x with batching** (aim: at least 5x), "
           f"{data['speedup_image_no_batching']:.1f}x without.\n",
           "Server memory (VmRSS, MB): " + ", ".join(
               f"batching {k}: {v['before_mb']:.0f} before, {v.get('after_mb', float('nan')):.0f} after"
               for k, v in memory.items()) + ".\n",
           f"Overload (queue 8, 64 clients, 256 requests of 16 images): statuses {json.dumps(over['status'])}; "
           f"server answering /healthz afterwards: {'yes' if over['alive_after'] else 'NO'}.\n"]
    write_results("serve", data, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
