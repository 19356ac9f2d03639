"""What a backbone costs to run: FLOPs per image, inference latency and throughput, peak memory. Apart from the
quality metrics (metrics.py), which read saved logits and need no PyTorch."""

from __future__ import annotations

import sys
import time

import numpy as np
import torch


def gflops(model: torch.nn.Module, image_size: tuple[int, int], device: torch.device) -> float:
    """Floating-point operations for one image, in billions, counted by PyTorch's flop counter (a multiply-add
    counts as two)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros(1, 3, *image_size, device=device))
    return counter.get_total_flops() / 1e9


@torch.inference_mode()
def speed(model: torch.nn.Module, image_size: tuple[int, int], batch_size: int, precision, repeats: int = 10) -> dict:
    """Inference latency at batch 1 (median, ms) and throughput at `batch_size` (images/s) on synthetic input."""
    model.eval()

    def timed(batch: int) -> float:
        images = precision.to_device(torch.randn(batch, 3, *image_size))
        times = []
        for i in range(repeats + 2):
            if precision.device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            with precision.autocast():
                model(images)
            if precision.device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 2:  # two warm-up passes
                times.append(time.perf_counter() - started)
        return float(np.median(times))

    return {"latency_ms_batch1": 1000 * timed(1), "throughput_images_per_s": batch_size / timed(batch_size)}


def peak_memory_mb(device: torch.device) -> tuple[float | None, str]:
    """The accelerator's peak allocated memory on CUDA, else the process's peak resident memory where the platform
    reports it (not on Windows: None, 'unavailable')."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda peak allocated"
    try:
        import resource  # Unix only
    except ImportError:
        return None, "unavailable"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "peak resident (process)"
