"""The `backbones` command that `pip install .` puts on the PATH: one entry point for every tool.

backbones train <dataset> [flags]     fine-tune, as `python <dataset>.py [flags]` does
backbones rank|choose|report|robustness|predict|export|sweep|bench|split [flags]
"""

from __future__ import annotations

import argparse
import importlib
import sys

from backbones import datasets
from backbones.errors import HelpFormatter, run_cli

TOOLS = {
    "train": "fine-tune a backbone: backbones train <dataset> -model <backbone> ... (see train <dataset> -h)",
    "rank": "rank backbones from frozen features before fine-tuning any",
    "choose": "choose a backbone within a budget: rank, race learning rates by successive halving, confirm",
    "report": "compare finished runs: leaderboards with ties, cost, calibration, recommendations",
    "predict": "classify new images with a finished run's model (top-k labels, calibrated probabilities)",
    "export": "export a finished run's model as ONNX, TorchScript or safetensors, verified against PyTorch",
    "sweep": "run a grid of backbones x datasets x data sizes x seeds that survives being killed",
    "robustness": "score finished runs on corrupted and transformed copies of their own test split",
    "bench": "measure where a run's time goes: model, data pipeline, loop",
    "split": "split a folder of class folders into train/test(/val)",
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="backbones",
        description="Which ImageNet-pretrained backbone to fine-tune on your image dataset, and what it costs. "
        + "; ".join(f"'{name}': {text}" for name, text in TOOLS.items()),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("command", choices=TOOLS, help="the tool to run; its own flags follow (see <command> -h)")
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="the tool's flags")
    given = parser.parse_args(argv[:1])
    rest = argv[1:]
    if given.command != "train":
        run_cli(lambda: importlib.import_module(f"backbones.{given.command}").main(rest))
        return
    if not rest or rest[0] not in datasets.NAMES:
        parser.error(f"train needs a dataset first, one of: {', '.join(datasets.NAMES)}")
    from backbones.finetune import run

    run(datasets.spec(rest[0]), rest[1:])
