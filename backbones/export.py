"""Export a finished run's model for another runtime, and verify what was written before saying it is done.

Usage: python export.py --run runs/<run> --format onnx|torchscript|safetensors --out model/

The exported model is run through its own runtime (onnxruntime for ONNX, `torch.jit.load` for TorchScript, a
fresh model loading the safetensors file) on the run's own test images, beside the PyTorch model: every image
must get the same top-1 and probabilities within 1e-4. The folder also gets a model card (model.json and a
README.md) saying how to feed the model and what it scored. The folder is built beside --out and renamed into
place only once verified, so a failed or killed export leaves nothing that looks finished.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from backbones import models
from backbones.errors import HelpFormatter, UserError, run_cli
from backbones.flags import add_out, add_workers, frozen
from backbones.runfiles import library_versions, write_json
from backbones.runmodel import FinishedRun, open_finished, reopen_split

PROBABILITY_TOLERANCE = 1e-4
FORMATS = {  # format: (file name, the packages its export and verification need)
    "onnx": ("model.onnx", ("onnx", "onnxscript", "onnxruntime")),
    "torchscript": ("model.pt", ()),
    "safetensors": ("model.safetensors", ("safetensors",)),
}


@dataclass(frozen=True)
class ExportConfig:
    run: Path
    format: str
    out: Path
    workers: int


def parse_args(argv: list[str] | None = None) -> ExportConfig:
    parser = argparse.ArgumentParser(
        description="Export a finished run's fine-tuned model with a model card, after checking that the exported "
        "model classifies the run's test images as PyTorch does.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--run", type=Path, required=True, help="the folder of a finished run (runs/<run>)")
    parser.add_argument("--format", choices=list(FORMATS), default="onnx", help="what to write")
    add_out(parser, Path("model"), "a new (or empty) folder for the export")
    add_workers(parser, "data-loading processes for the verification")
    return frozen(ExportConfig, parser.parse_args(argv))


@dataclass
class Verification:
    images: int
    same_top1: int
    max_probability_difference: float
    runtime: str

    @property
    def passed(self) -> bool:
        return self.same_top1 == self.images and self.max_probability_difference <= PROBABILITY_TOLERANCE

    def as_dict(self) -> dict:
        return {
            "images": self.images,
            "same_top1": self.same_top1,
            "max_probability_difference": self.max_probability_difference,
            "tolerance": PROBABILITY_TOLERANCE,
            "runtime": self.runtime,
            "passed": self.passed,
        }


# ----------------------------------------------------------------------------------- writers and runtimes
def write_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """torch.export's ONNX exporter (the maintained one), the batch dimension left dynamic."""
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (example,), input_names=["images"], output_names=["logits"], dynamo=True,
            dynamic_shapes=({0: batch},), verbose=False,
        )  # fmt: skip
    program.save(str(path))


def onnx_runtime(path: Path, run: FinishedRun) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    import onnx
    import onnxruntime

    onnx.checker.check_model(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda images: torch.from_numpy(session.run(None, {"images": images.numpy()})[0]), (
        f"onnxruntime {onnxruntime.__version__} (CPU)"
    )


def write_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """A traced graph (torch.jit.trace; PyTorch deprecates TorchScript in favour of torch.export, but LibTorch
    and many serving stacks still load it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, str(path))


def torchscript_runtime(path: Path, run: FinishedRun) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notice: it still loads
        loaded = torch.jit.load(str(path), map_location="cpu").eval()
    return lambda images: loaded(images), f"torch.jit.load (PyTorch {torch.__version__})"


def write_safetensors(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """The weights alone, without pickle: any copy of the architecture loads them."""
    from safetensors.torch import save_file

    state = {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt"})


def safetensors_runtime(path: Path, run: FinishedRun) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    import safetensors
    from safetensors.torch import load_file

    fresh = models.create_model(run.model_name, len(run.classes), "none")
    fresh.load_state_dict(load_file(str(path)), strict=True)
    fresh.eval()
    return lambda images: fresh(
        images
    ), f"a fresh {run.model_name} loading the file (safetensors {safetensors.__version__})"


WRITERS = {"onnx": write_onnx, "torchscript": write_torchscript, "safetensors": write_safetensors}
RUNTIMES = {"onnx": onnx_runtime, "torchscript": torchscript_runtime, "safetensors": safetensors_runtime}


# ------------------------------------------------------------------------------------------------ verifying
@torch.inference_mode()
def verify(model: nn.Module, exported: Callable[[torch.Tensor], torch.Tensor], batches, runtime: str) -> Verification:
    """PyTorch's and the exported model's probabilities on the same images, compared image by image."""
    images, same, worst = 0, 0, 0.0
    for inputs, _ in batches:
        inputs = inputs.float().cpu().contiguous()
        expected = model(inputs).double().softmax(1)
        found = exported(inputs).double().softmax(1)
        same += int((expected.argmax(1) == found.argmax(1)).sum())
        worst = max(worst, float((expected - found).abs().max()))
        images += len(inputs)
    return Verification(images, same, worst, runtime)


# ------------------------------------------------------------------------------------------------ the card
def weights_origin(run: FinishedRun) -> dict:
    """Where the weights the run started from came from, and the licence their publisher states."""
    start, name = run.record["weights"], run.model_name
    if start == "none":
        return {"started_from": "random initialisation (no pretrained weights)", "licence": None}
    if start != "imagenet":
        return {"started_from": f"the checkpoint {start}", "licence": None}
    if name.startswith(models.TIMM_PREFIX):
        import timm

        config = timm.create_model(name[len(models.TIMM_PREFIX) :], pretrained=False).pretrained_cfg
        return {
            "started_from": f"timm's ImageNet weights {config.get('hf_hub_id') or config.get('url')}",
            "licence": config.get("license"),
        }
    imagenet = models.BACKBONES[name].imagenet
    if isinstance(imagenet, str):
        return {
            "started_from": f"the authors' published ImageNet checkpoint {imagenet}",
            "licence": None,
            "terms": "the checkpoint states no licence; see the authors' repository",
        }
    return {
        "started_from": f"torchvision's {imagenet} (training recipe: {imagenet.meta.get('recipe')})",
        "licence": None,
        "terms": "torchvision states no licence in its weights' metadata; its documentation says pretrained "
        "weights may carry terms of their own, derived from the data they were trained on (ImageNet)",
    }


def model_card(run: FinishedRun, fmt: str, verification: Verification) -> dict:
    record = run.record
    versions = library_versions()
    for package in FORMATS[fmt][1]:
        versions[package] = __import__(package).__version__
    size = list(run.image_size)
    return {
        "card_version": 1,
        "format": fmt,
        "file": FORMATS[fmt][0],
        "backbone": run.model_name,
        "classes": run.classes,
        "input": {
            "layout": "NCHW",
            "dtype": "float32",
            "size": size,
            "batch": "any",
            "preprocessing": f"RGB (EXIF orientation applied), resized to {size[0]}x{size[1]} (height x width) with "
            "Pillow's antialiased bilinear resize, scaled to [0, 1], then (x - mean) / std per channel",
            "mean": list(run.normalisation[0]),
            "std": list(run.normalisation[1]),
        },
        "output": "logits (N x classes); softmax(logits / temperature) gives calibrated probabilities",
        "temperature": run.temperature,
        "test": {
            "top1": record["top1"],
            "top5": record["top5"],
            "balanced_accuracy": record["balanced_accuracy"],
            "macro_f1": record["macro_f1"],
            "nll": record["nll"],
            "ece": record["ece"],
            "ece_temperature_scaled": record["ece_temperature_scaled"],
            "n_test": record["n_test"],
            "seed": record["seed"],
            "protocol": record["protocol"],
            "selection": record.get("selection"),
        },
        "data": {key: record[key] for key in ("dataset", "dataset_options", "dataset_fingerprint", "n_train", "n_val")},
        "weights": weights_origin(run),
        "run": str(run.folder),
        "versions": versions,
        "verification": verification.as_dict(),
    }


def card_readme(card: dict) -> str:
    test, shape, weights = card["test"], card["input"], card["weights"]
    t = card["temperature"]
    lines = [
        f"# {card['backbone']} fine-tuned on {card['data']['dataset']} ({card['format']})",
        "",
        f"`{card['file']}`: {len(card['classes'])} classes ({', '.join(card['classes'][:10])}"
        f"{', ...' if len(card['classes']) > 10 else ''}; all in model.json, in output order).",
        "",
        f"**Input**: float32 {shape['layout']}, {shape['size'][0]}x{shape['size'][1]}, any batch size. "
        f"{shape['preprocessing']}: mean {shape['mean']}, std {shape['std']}.",
        "",
        f"**Output**: {card['output']}" + (f"; temperature {t:.4f}." if t else " (no temperature was fitted)."),
        "",
        f"**Test** ({test['n_test']} images, seed {test['seed']}, protocol {test['protocol']}): top-1 "
        f"{test['top1']:.2f}%, NLL {test['nll']:.4f}, ECE {test['ece']:.4f}.",
        "",
        f"**Weights**: started from {weights['started_from']}; licence: {weights['licence'] or 'not stated'}"
        + (f". {weights['terms']}." if "terms" in weights else "."),
        "",
        f"**Verified** with {card['verification']['runtime']} on the run's {card['verification']['images']} test "
        f"images: the same top-1 on {card['verification']['same_top1']}, probabilities within "
        f"{card['verification']['max_probability_difference']:.1e} of PyTorch's.",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ main
def check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} already exists and is not an empty folder; this tool never overwrites files. "
                        "Choose a new --out.")  # fmt: skip
    parent = out.absolute().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UserError(f"--out {out}: {parent} is not a writable folder. Choose an --out in a writable place.")


def check_packages(fmt: str) -> None:
    missing = [package for package in FORMATS[fmt][1] if importlib.util.find_spec(package) is None]
    if missing:
        raise UserError(
            f"--format {fmt} needs {', '.join(missing)}, which is not installed: pip install {' '.join(missing)} "
            "(or pip install 'backbones[export]'). Or choose another --format."
        )


def export(run: FinishedRun, fmt: str, out: Path, workers: int) -> dict:
    """Write, verify and describe the export in a folder beside `out`, then move it into place."""
    job, model, batches = reopen_split(run.folder, "test", "cpu", workers)
    model = model.float().eval()
    example = torch.zeros(2, 3, *run.image_size)
    building = out.absolute().parent / f".{out.name}.partial"
    shutil.rmtree(building, ignore_errors=True)  # left by a killed export
    building.mkdir()
    try:
        path = building / FORMATS[fmt][0]
        try:
            WRITERS[fmt](model, example, path)
        except Exception as err:  # exporters raise many types for an operator they cannot express
            raise UserError(
                f"{run.model_name} cannot be exported as {fmt}: {type(err).__name__}: {str(err)[:500]}. Try "
                "another --format (safetensors keeps the weights of any model)."
            ) from err
        exported, runtime = RUNTIMES[fmt](path, run)
        verification = verify(model, exported, batches, runtime)
        if not verification.passed:
            raise UserError(
                f"The {fmt} export of {run.model_name} does not compute what PyTorch does: on {verification.images} "
                f"test images, {verification.same_top1} got the same top-1 and probabilities differ by up to "
                f"{verification.max_probability_difference:.2e} (allowed {PROBABILITY_TOLERANCE:g}). Nothing was "
                "written; try another --format."
            )
        card = model_card(run, fmt, verification)
        write_json(card, building / "model.json")
        (building / "README.md").write_text(card_readme(card))
        if out.exists():
            out.rmdir()  # empty, checked above
        building.rename(out)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return card


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    check_out(config.out)
    check_packages(config.format)
    run = open_finished(config.run)
    card = export(run, config.format, config.out, config.workers)
    check = card["verification"]
    print(
        f"{run.model_name} exported as {config.format} to {config.out / card['file']}, "
        f"verified with {check['runtime']}: "
        f"the same top-1 on {check['same_top1']}/{check['images']} test images, probabilities within "
        f"{check['max_probability_difference']:.1e} of PyTorch's; model card in {config.out / 'model.json'}"
    )


if __name__ == "__main__":
    run_cli(main)
