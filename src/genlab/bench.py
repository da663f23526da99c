"""Timing helpers shared by the benchmarks: machine description with a measured matmul
peak, data-pipeline throughput, model FLOPs and utilisation."""

from __future__ import annotations

import platform
import time

import torch
from torch import nn

from genlab.data.transforms import BatchPipeline
from genlab.engine.device import cpu_bf16_is_fast, cpu_model, matmul_gflops


def machine_info() -> dict:
    """CPU model, threads, versions and the fp32/bf16 matmul peaks measured now."""
    import genlab
    from genlab.engine.run import git_commit

    return {
        "cpu_model": cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "genlab": genlab.__version__,
        "git_commit": git_commit(),
        "matmul_fp32_gflops": round(matmul_gflops(torch.float32, 1024, 1.0), 1),
        "matmul_bf16_gflops": round(matmul_gflops(torch.bfloat16, 1024, 1.0), 1),
        "bf16_autocast": cpu_bf16_is_fast(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def pipeline_throughput(x: torch.Tensor, y: torch.Tensor | None, pipeline: BatchPipeline,
                        batch_size: int = 128, seconds: float = 3.0) -> float:
    """Images per second the batch pipeline prepares (gather + augment + normalise)."""
    n, done = len(x), 0
    g = torch.Generator().manual_seed(0)
    t_end = time.perf_counter() + seconds
    t0 = time.perf_counter()
    while time.perf_counter() < t_end:
        idx = torch.randint(0, n, (batch_size,), generator=g)
        pipeline(x[idx], None if y is None else y[idx])
        done += batch_size
    return done / (time.perf_counter() - t0)


def dense_macs_per_example(model: nn.Module, example: dict[str, torch.Tensor]) -> int:
    """Multiply-accumulates of Linear/Conv layers in one forward pass of `model.loss` on one
    example, counted with forward hooks."""
    macs = 0

    def hook(mod, inp, out):
        nonlocal macs
        if isinstance(mod, nn.Linear):
            macs += out.numel() // out.shape[-1] * mod.in_features * mod.out_features
        elif isinstance(mod, nn.Conv2d):  # each output element: C_in/groups * kh * kw MACs
            macs += out.numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
        else:  # ConvTranspose2d: each input element scatters into C_out/groups * kh * kw outputs
            macs += inp[0].numel() * mod.out_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))]
    try:
        with torch.no_grad():
            model.loss(example)
    finally:
        for h in handles:
            h.remove()
    return macs // len(next(iter(example.values())))


def training_mfu(images_per_s: float, macs_per_image: int, peak_gflops: float) -> float:
    """Model FLOPs utilisation: 6 FLOPs per MAC (forward 2 + backward 4) against the peak."""
    return images_per_s * 6 * macs_per_image / (peak_gflops * 1e9)
