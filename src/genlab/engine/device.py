"""Devices: choose cpu/cuda, set threads, name the hardware, decide whether bf16 autocast
pays off, and measure the matmul peak that benchmarks report utilisation against."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from functools import lru_cache
from typing import Callable

import torch

from genlab.errors import ConfigError

log = logging.getLogger("genlab")


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return torch.device(name)


@lru_cache(maxsize=None)
def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name, with its x86 family and model numbers where /proc/cpuinfo gives them:
    virtual machines often report only "AMD EPYC" or "Intel(R) Xeon(R) Processor", which names
    generations as different as Zen 3 (no bf16 instructions) and Zen 4 (avx512_bf16)."""
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model") and key not in fields:
                    fields[key] = value.strip()
                if len(fields) == 3 or not line.strip():
                    break
    except OSError:
        pass
    if "model name" not in fields:
        return platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        return f"{fields['model name']} (family {fields['cpu family']}, model {fields['model']})"
    return fields["model name"]


@lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cxx_compiler() -> str | None:
    """Path of the C++ compiler torch.compile would use on CPU ($CXX, else g++, c++, clang++), or None."""
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and (path := shutil.which(name)):
            return path
    return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {torch.get_num_threads()} threads"


def matmul_gflops(dtype: torch.dtype = torch.float32, n: int = 1024, seconds: float = 0.5,
                  device: str = "cpu") -> float:
    """Measured dense matmul rate in GFLOP/s (n x n x n, best of repeated timings)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    best, t_end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        torch.mm(a, b)
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def _measured_once(file: str, key: str, measure: Callable[[], dict]) -> dict:
    """`measure()` for this machine (CPU model, torch version, thread count) and `key`, kept in
    genlab's cache file `file`: measured the first time, read back after."""
    from genlab.data.datasets import cache_dir
    from genlab.engine.checkpoint import atomic_write_json

    path = cache_dir() / file
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    full = "|".join(k for k in (cpu_model(), torch.__version__, str(torch.get_num_threads()), key) if k)
    if full not in known:
        known[full] = measure()
        atomic_write_json(path, known)
    return known[full]


@lru_cache(maxsize=None)
def cpu_bf16_is_fast() -> bool:
    """True when bf16 matmuls run clearly faster than fp32 on this CPU (e.g. AMX on recent
    Xeons); the answer is cached per CPU model and torch version in genlab's cache."""
    def measure() -> dict:
        f32 = matmul_gflops(torch.float32, 512, 0.2)
        bf16 = matmul_gflops(torch.bfloat16, 512, 0.2)
        return {"fp32_gflops": f32, "bf16_gflops": bf16, "fast": bf16 > 1.5 * f32}

    return bool(_measured_once("bf16_probe.json", "", measure)["fast"])


def faster_precision(step: Callable[[torch.dtype | None], None], key: str, reps: int = 3) -> dict:
    """Whether one model's training step runs faster under bf16 autocast than in fp32 on this CPU.

    `step(dtype)` runs the step (forward and backward; dtype None = fp32); it is timed both ways,
    alternating, best of `reps` each after one warm-up of each. bf16 is chosen only when at least
    10% faster: small models often lose (the casts and the elementwise ops cost more than the
    matmuls save), large ones gain several-fold where the CPU has AMX. The answer is cached under
    `key` (the model and batch shapes) with the CPU model, torch version and thread count, so
    every run of one configuration on one machine trains in the same precision.

    Returns {"choice": "bf16" | "off", "fp32_s": seconds, "bf16_s": seconds}.
    """
    def measure() -> dict:
        times: dict[str, list[float]] = {"off": [], "bf16": []}
        for dtype in (None, torch.bfloat16):
            step(dtype)
        for _ in range(reps):
            for name, dtype in (("off", None), ("bf16", torch.bfloat16)):
                t0 = time.perf_counter()
                step(dtype)
                times[name].append(time.perf_counter() - t0)
        f32, bf16 = min(times["off"]), min(times["bf16"])
        return {"choice": "bf16" if bf16 < 0.9 * f32 else "off", "fp32_s": f32, "bf16_s": bf16}

    return _measured_once("amp_probe.json", key, measure)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """bf16 when asked for, or on `auto` where it is fast; None = full precision."""
    if amp == "off":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if amp == "bf16" or cpu_bf16_is_fast():
        return torch.bfloat16
    return None
