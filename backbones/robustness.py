"""Beyond accuracy, on your own data: how each finished run's fine-tuned backbone holds up when its test images are
corrupted (ImageNet-C's families at severities 1-5), zoomed, shifted, rotated, flipped or seen at lower
resolution, and which mistakes it makes. Every number comes from the run's own best.pt on exactly its own test
split (checked against split.csv and the split recorded in the checkpoint), fed as the run fed it.

Usage: python robustness.py --runs runs/ [more folders ...]   (writes robustness.json into each run's folder)
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.transforms import v2

from backbones.corruptions import CORRUPTIONS, REFERENCE_SIZE, corrupt
from backbones.errors import HelpFormatter, UserError, run_cli
from backbones.flags import add_device, add_runs, add_workers, frozen
from backbones.record import FAMILIES, INVARIANCE, SCHEMA
from backbones.runcheck import read_json
from backbones.runfiles import library_versions, write_json
from backbones.runfolder import RunFolder
from backbones.runmodel import reopen_split
from backbones.runtable import finished_runs
from backbones.train_common import predict

CORRUPTION_STREAM = 11  # beside the split and augmentation streams: corruption draws never move either
TOP_CONFUSIONS = 10


@dataclass(frozen=True)
class RobustnessConfig:
    runs: tuple[Path, ...]
    corruptions: tuple[str, ...]
    severities: tuple[int, ...]
    invariance: bool
    seed: int
    device: str
    workers: int
    force: bool

    @property
    def request(self) -> dict:
        """What an analysis was asked for: an earlier robustness.json that answers the same is not redone."""
        return {
            "corruptions": [name for name in CORRUPTIONS if name in self.corruptions],
            "severities": sorted(set(self.severities)),
            "seed": self.seed,
            "invariance": self.invariance,
        }


def parse_args(argv: list[str] | None = None) -> RobustnessConfig:
    parser = argparse.ArgumentParser(
        description="Evaluate every finished run under --runs on corrupted and transformed copies of its own test "
        "split, and write robustness.json beside its metrics.json (report.py then shows the results). Runs "
        "already analysed the same way are skipped.",
        formatter_class=HelpFormatter,
    )
    add_runs(parser)
    parser.add_argument(
        "--corruptions",
        nargs="+",
        choices=list(CORRUPTIONS),
        default=list(CORRUPTIONS),
        metavar="NAME",
        help=f"the corruptions to apply, of: {', '.join(CORRUPTIONS)} (default: all)",
    )
    parser.add_argument(
        "--severities", type=int, nargs="+", choices=range(1, 6), default=[1, 2, 3, 4, 5], metavar="S",
        help="severities to apply, 1 (mild) to 5",
    )  # fmt: skip
    parser.add_argument(
        "--no-invariance", action="store_true", help="skip the scale, shift, rotation, flip and resolution part"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the corruptions' random draws")
    add_device(parser)
    add_workers(parser)
    parser.add_argument("--force", action="store_true", help="redo runs whose robustness.json already answers this")
    parsed = parser.parse_args(argv)
    return frozen(RobustnessConfig, parsed, invariance=not parsed.no_invariance)


class TimedModel(nn.Module):
    """The model, with the seconds its forward passes took (waiting for the device) added to `seconds`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.seconds = model, 0.0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        out = self.model(images)
        synchronize(images.device)
        self.seconds += time.perf_counter() - started
        return out


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------- the transformations
def zoomed(images: torch.Tensor, factor: float) -> torch.Tensor:
    h, w = images.shape[-2:]
    resized = v2.functional.resize(images, [round(h * factor), round(w * factor)], antialias=True)
    return v2.functional.center_crop(resized, [h, w])  # pads with black when zoomed out


def shifted(images: torch.Tensor, pixels: int) -> torch.Tensor:
    return v2.functional.affine(images, angle=0.0, translate=[pixels, pixels], scale=1.0, shear=[0.0, 0.0], fill=0)


def rotated(images: torch.Tensor, degrees: float) -> torch.Tensor:
    return v2.functional.rotate(images, degrees, interpolation=v2.InterpolationMode.BILINEAR, fill=0)


def lower_resolution(images: torch.Tensor, share: float) -> torch.Tensor:
    h, w = images.shape[-2:]
    small = v2.functional.resize(images, [max(1, round(h * share)), max(1, round(w * share))], antialias=True)
    return v2.functional.resize(small, [h, w], antialias=True)


TRANSFORMS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "scale": zoomed,
    "shift": shifted,
    "rotation": rotated,
    "hflip": lambda images, _: images.flip(-1),
    "resolution": lower_resolution,
}


def invariance_amounts(name: str, image_size: tuple[int, int]) -> list:
    """The amounts of transformation `name` at this image size (shifts scaled from 224 px, at least a pixel)."""
    amounts = INVARIANCE[name][1]
    if name == "shift":
        scale = min(image_size) / REFERENCE_SIZE
        return sorted({max(1, round(pixels * scale)) for pixels in amounts})
    return list(amounts)


# ---------------------------------------------------------------------------------------------- scoring
def scores(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Top-1 (%), NLL and the mean softmax probability of the true class, from float32 logits."""
    probs = logits.double().softmax(1)
    return {
        "top1": 100 * (logits.argmax(1) == labels).double().mean().item(),
        "nll": nn.functional.cross_entropy(logits.double(), labels).item(),
        "true_class_prob": probs[torch.arange(len(labels)), labels].mean().item(),
    }


def confusion_pairs(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> list[dict]:
    """The (true, predicted) class pairs that account for most mistakes, with their share of all mistakes."""
    predictions = logits.argmax(1)
    wrong = predictions != labels
    pairs = Counter(zip(labels[wrong].tolist(), predictions[wrong].tolist(), strict=True))
    total = int(wrong.sum())
    return [
        {"true": classes[t], "predicted": classes[p], "count": n, "share_of_errors": round(n / total, 4)}
        for (t, p), n in pairs.most_common(TOP_CONFUSIONS)
    ]


def corruption_seed(seed: int, run_seed: int, name: str, severity: int) -> int:
    index = list(CORRUPTIONS).index(name)
    return int(np.random.SeedSequence([seed, CORRUPTION_STREAM, run_seed, index, severity]).generate_state(1)[0])


# ------------------------------------------------------------------------------------------------ one run
def analyse(run: dict, wanted: dict, device_name: str, workers: int) -> dict:
    """Every corruption and transformation `wanted` (`request`) asks for, scored on the run's test split."""
    job, model, batches = reopen_split(Path(run["folder"]), "test", device_name, workers)
    device, size = job.precision.device, job.config.image_size
    timed = TimedModel(model)

    def evaluate(perturb, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
        batches.perturb = perturb
        return predict(timed, batches, job.precision, desc)

    logits, labels = evaluate(None, "clean")
    clean = scores(logits, labels)
    clean["recorded_top1"] = run["top1"]
    clean["reproduces_record"] = round(clean["top1"], 6) == round(run["top1"], 6)
    corruption_seconds, timed.seconds = 0.0, 0.0
    corruptions, image_hits = {}, torch.zeros(len(labels), dtype=torch.float64)
    for name in wanted["corruptions"]:
        rows = []
        for severity in wanted["severities"]:
            seed = corruption_seed(wanted["seed"], run["seed"], name, severity)
            generator = torch.Generator(device).manual_seed(seed)

            def perturb(images: torch.Tensor) -> torch.Tensor:
                nonlocal corruption_seconds
                started = time.perf_counter()
                out = corrupt(images, name, severity, generator)  # noqa: B023 (used within this iteration)
                synchronize(device)
                corruption_seconds += time.perf_counter() - started
                return out

            outputs, _ = evaluate(perturb, f"{name} {severity}")
            image_hits += outputs.argmax(1) == labels
            rows.append({"severity": severity, **scores(outputs, labels)})
        corruptions[name] = {
            "family": CORRUPTIONS[name].family,
            "parameters": [CORRUPTIONS[name].severities[s - 1] for s in wanted["severities"]],
            "severities": rows,
        }
    inference_seconds = timed.seconds
    invariance = {}
    if wanted["invariance"]:
        for name, transform in TRANSFORMS.items():
            invariance[name] = {
                "unit": INVARIANCE[name][0],
                "amounts": [
                    {"amount": amount, **scores(*evaluate(lambda images, t=transform, a=amount: t(images, a), name))}
                    for amount in invariance_amounts(name, size)
                ],
            }
    return record(run, job, clean, corruptions, invariance, wanted, corruption_seconds, inference_seconds, logits,
                  labels, image_hits)  # fmt: skip


def record(run, job, clean, corruptions, invariance, wanted, corruption_seconds, inference_seconds, logits, labels,
           image_hits):  # fmt: skip
    """robustness.json: the numbers, what was asked for, the scale of the corruptions and what they cost."""
    size = list(job.config.image_size)
    passes = len(wanted["corruptions"]) * len(wanted["severities"])
    per_corruption = {name: np.mean([r["top1"] for r in c["severities"]]) for name, c in corruptions.items()}
    mean_top1 = float(np.mean(list(per_corruption.values()))) if per_corruption else None
    families = {
        family: float(np.mean([v for n, v in per_corruption.items() if CORRUPTIONS[n].family == family]))
        for family in FAMILIES
        if any(CORRUPTIONS[n].family == family for n in per_corruption)
    }
    return {
        "schema": SCHEMA,
        "run": run["folder"],
        "dataset": run["dataset"],
        "dataset_fingerprint": run["dataset_fingerprint"],  # with model, seed and clean top-1: which run this is
        "model": run["model"],
        "seed": run["seed"],
        "image_size": size,
        "n_test": len(labels),
        "device": str(job.precision.device),
        "request": wanted,
        "pixel_scale": round(min(size) / REFERENCE_SIZE, 6),
        "clean": clean,
        "mean_corruption_top1": mean_top1,
        "relative_drop": relative_drop(clean["top1"], mean_top1),
        "family_top1": families,
        "corruptions": corruptions,
        "invariance": invariance,
        "confusion_pairs": confusion_pairs(logits, labels, job.catalog.classes),
        # each test image's share of its corrupted copies classified right, in split.csv order
        "image_corruption_top1": (image_hits / max(passes, 1)).round(decimals=4).tolist(),
        "seconds": {
            "corruption": round(corruption_seconds, 3),
            "inference": round(inference_seconds, 3),
            "corruption_over_inference": round(corruption_seconds / max(inference_seconds, 1e-9), 4),
        },
        "versions": library_versions(),
        "finished": datetime.now().isoformat(timespec="seconds"),
    }


def relative_drop(clean: float, corrupted: float | None) -> float | None:
    """(clean - corrupted) / clean: the share of its accuracy a backbone loses under corruption."""
    return None if corrupted is None or not clean else (clean - corrupted) / clean


def answered(path: Path, wanted: dict) -> bool:
    """Whether an earlier robustness.json holds exactly the analysis asked for."""
    earlier, problem = read_json(path)
    return not problem and isinstance(earlier, dict) and earlier.get("request") == wanted


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    runs, skipped = finished_runs(config.runs)
    wanted = config.request
    unwritable = [run["folder"] for run in runs if not os.access(run["folder"], os.W_OK)]
    if unwritable:
        raise UserError(
            f"robustness.py writes robustness.json into each run's folder, and {len(unwritable)} cannot be written "
            f"(e.g. {unwritable[0]}). Make them writable (or copy the runs somewhere writable) and run again."
        )
    for run in runs:
        path = RunFolder(Path(run["folder"])).robustness
        if path.exists() and not config.force and answered(path, wanted):
            print(f"{run['folder']}: analysed already ({path.name}; --force redoes it)")
            continue
        result = analyse(run, wanted, config.device, config.workers)
        try:
            write_json(result, path)
        except OSError as err:
            raise UserError(
                f"{path} cannot be written ({err.strerror or err}); the analyses written so far are kept. Free some "
                "space or make the run folder writable, then run again: finished analyses are skipped."
            ) from err
        print(summary(result))
    for folder, reason in skipped:
        print(f"skipped {folder}: {reason}")


def summary(result: dict) -> str:
    clean, seconds = result["clean"], result["seconds"]
    text = f"{result['run']}: {result['model']} on {result['dataset']}: clean top-1 {clean['top1']:.2f}%"
    if not clean["reproduces_record"]:
        text += (
            f" (WARNING: the run recorded {clean['recorded_top1']:.2f}%; the device or library versions differ from "
            "the run's, so predictions near a tie can flip)"
        )
    if result["mean_corruption_top1"] is not None:
        text += (
            f", mean corruption top-1 {result['mean_corruption_top1']:.2f}%"
            + (f" (relative drop {100 * result['relative_drop']:.1f}%)" if result["relative_drop"] is not None else "")
            + f"; corrupting took {seconds['corruption']:.1f}s against "
            f"{seconds['inference']:.1f}s of inference ({100 * seconds['corruption_over_inference']:.0f}%)"
        )
    return text


if __name__ == "__main__":
    run_cli(main)
