"""Where a run computes: the device and its precision, the processes of a torchrun job, random streams, memory."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from backbones.errors import UserError


def world() -> tuple[int, int]:
    """(this process's rank, number of processes): (0, 1) unless launched by torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Only the first process writes files and prints."""
    return world()[0] == 0


def start_distributed(device_name: str) -> None:
    """Join the torchrun job this process was started in (NCCL on GPUs, gloo on CPUs); nothing otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        cuda = device_name != "cpu" and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")


def gather_shards(local: torch.Tensor) -> torch.Tensor:
    """Reassemble a tensor whose rows were strided over the processes (row i on rank i % size)."""
    rank, size = world()
    if size == 1:
        return local
    parts: list = [None] * size
    dist.all_gather_object(parts, local.cpu())
    full = parts[0].new_empty((sum(len(part) for part in parts), *parts[0].shape[1:]))
    for index, part in enumerate(parts):
        full[index::size] = part
    return full


@dataclass
class Precision:
    """How tensors are computed on this device: mixed precision and memory format (CUDA only)."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"Unknown --device '{name}'. Use auto, cpu, cuda, cuda:N or mps.") from err
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise UserError(
            f"--device {name} was asked for, but this machine has {torch.cuda.device_count()} CUDA "
            "devices visible to PyTorch. Use --device cpu, or check the driver and CUDA_VISIBLE_DEVICES."
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps was asked for, but MPS is not available here. Use --device cpu.")
    return device


def make_precision(device: torch.device) -> Precision:
    if device.type != "cuda":
        return Precision(device, None, False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return Precision(device, dtype, True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every random stream a run draws from (data order and augmentation come from seed and epoch alone), so a
    resumed run draws exactly what an uninterrupted one would."""
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
        "python": random.getstate(),
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(tuple(tuple(part) if isinstance(part, list) else part for part in state["python"]))


def check_memory(batch_size: int, size: tuple[int, int], device: torch.device) -> None:
    """Refuse, before any work, a batch whose input images alone exceed the device's memory."""
    needed = batch_size * 3 * size[0] * size[1] * 4  # one float32 batch, before any activation
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
    elif hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    else:
        return
    if needed > total:
        raise UserError(
            f"--image-size {size[0]}x{size[1]} at -bs {batch_size} needs {needed / 2**30:,.1f} GiB for one batch of "
            f"input images alone (activations need many times more), and this {device.type} device has "
            f"{total / 2**30:,.1f} GiB. Lower --image-size or -bs."
        )


@contextlib.contextmanager
def out_of_memory_as_user_error():
    """An allocation that fails mid-run becomes a clear message rather than a traceback."""
    try:
        yield
    except (torch.OutOfMemoryError, RuntimeError) as err:
        if not isinstance(err, torch.OutOfMemoryError) and "not enough memory" not in str(err):
            raise
        first = str(err).strip().splitlines()[0][:300]
        raise UserError(
            f"Out of memory: {first}. Lower -bs or --image-size (memory grows with both), or use a device with more "
            "memory; the run folder can be deleted."
        ) from err
