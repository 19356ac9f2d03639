"""How fast predict.py classifies image files against what the model alone allows, and the exported ONNX model's
speed on the CPU beside PyTorch's. A benchmark that prints figures, not a test.

Usage: python benchmarks/predict_export.py --run runs/<run> --images photos/ [--batch-size 64] [--workers 2]

  limit      images/s of forward passes on one synthetic batch already on the device (bench.py's synthetic
             batch and timer, inference mode): what the model alone allows at this size and batch
  predict    images/s of predict.py's path on the image files: read, EXIF, resize, batch, normalise, forward
  ratio      predict / limit (goal: at least 0.9)
  onnx_cpu   images/s of the run exported to ONNX, in onnxruntime on the CPU, beside PyTorch on the CPU
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backbones.bench import images_per_s, synthetic  # noqa: E402
from backbones.export import write_onnx  # noqa: E402
from backbones.predict import collect_inputs, predict_files  # noqa: E402
from backbones.runmodel import load_model, open_finished  # noqa: E402
from backbones.runtime import make_precision, resolve_device  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a finished run")
    parser.add_argument("--images", type=Path, nargs="+", required=True, help="image files or folders to classify")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="decoding processes")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    parser.add_argument("--steps", type=int, default=10, help="timed batches for the limit (default 10)")
    args = parser.parse_args()
    run = open_finished(args.run)
    precision = make_precision(resolve_device(args.device))
    paths = collect_inputs(args.images)
    model = load_model(run, precision.device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    size, batch = run.image_size, args.batch_size

    @torch.inference_mode()
    def forward(batches) -> None:
        for images, _ in batches:
            with precision.autocast():
                model(images)

    limit = images_per_s(synthetic(size, batch, len(run.classes), precision), batch, args.steps, 2,
                         precision.device, forward)  # fmt: skip
    predict_files(run, paths[: 2 * batch], precision, batch, args.workers, model)  # warm-up: workers, allocator
    started = time.perf_counter()
    predict_files(run, paths, precision, batch, args.workers, model)
    predicted = len(paths) / (time.perf_counter() - started)
    device = torch.cuda.get_device_name(precision.device) if precision.device.type == "cuda" else platform.machine()
    print(f"{run.model_name} at {size[0]}x{size[1]}, batch {batch}, {len(paths)} files, {args.workers} workers, "
          f"on {precision.device} ({device}, {os.cpu_count()} CPU cores)")  # fmt: skip
    print(f"limit {limit:.1f} img/s, predict {predicted:.1f} img/s: predict / limit = {predicted / limit:.2f}")

    import onnxruntime

    cpu_model = load_model(run, torch.device("cpu"))
    inputs = torch.randn(batch, 3, *size)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        write_onnx(cpu_model, torch.zeros(2, 3, *size), path)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {"images": inputs.numpy()}

        def onnx_step(batches) -> None:
            for _ in batches:
                session.run(None, feed)

        @torch.inference_mode()
        def torch_step(batches) -> None:
            for _ in batches:
                cpu_model(inputs)

        cpu = torch.device("cpu")
        onnx_speed = images_per_s(itertools.repeat(None), batch, args.steps, 2, cpu, onnx_step)
        torch_speed = images_per_s(itertools.repeat(None), batch, args.steps, 2, cpu, torch_step)
    print(f"CPU, batch {batch}: ONNX Runtime {onnx_speed:.1f} img/s, PyTorch {torch_speed:.1f} img/s "
          f"(x{onnx_speed / torch_speed:.2f}); torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
          f"numpy {np.__version__}")  # fmt: skip


if __name__ == "__main__":
    main()
