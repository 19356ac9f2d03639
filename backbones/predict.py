"""Classify new images with a finished run's fine-tuned model: top-k labels with raw and calibrated probabilities.

Usage: python predict.py --run runs/<run> photos/ more.jpg list.csv --out predictions.csv [--top-k 5]

Everything that shapes the input comes from the run's own record (image size, resize, normalisation, class
names), so an image of the run's test split gets exactly the logits the run stored for it. Calibrated
probabilities divide the logits by the temperature the run fitted on its validation split.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from backbones.datasets.common.readers import open_image
from backbones.errors import HelpFormatter, UserError, run_cli
from backbones.files import atomic_write
from backbones.flags import add_batch_size, add_device, add_out, add_workers, frozen, positive_int
from backbones.pipeline import decode
from backbones.runmodel import FinishedRun, load_model, open_finished, reopen_split
from backbones.runtable import check_new_file
from backbones.runtime import Precision, make_precision, resolve_device
from backbones.train_common import predict as predict_split
from backbones.train_common import progress

SKIPPED_EXIT = 1  # some inputs could not be read; the rest were predicted


@dataclass(frozen=True)
class PredictConfig:
    inputs: tuple[Path, ...]
    run: Path
    out: Path
    top_k: int
    min_confidence: float | None
    batch_size: int
    device: str
    workers: int


def parse_args(argv: list[str] | None = None) -> PredictConfig:
    parser = argparse.ArgumentParser(
        description="Classify images with a finished run's model. Inputs are image files, folders (searched "
        "deeply for images) and lists (.csv with a 'path' column, or .txt with a path a line; relative paths are "
        "read from the list's folder).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("inputs", type=Path, nargs="+", help="image files, folders of images, or .csv/.txt lists")
    parser.add_argument("--run", type=Path, required=True, help="the folder of a finished run (runs/<run>)")
    add_out(
        parser,
        Path("predictions.csv"),
        "where to write the predictions: .csv, or .jsonl for JSON lines; an existing file is never overwritten",
    )
    parser.add_argument(
        "--top-k", type=positive_int, default=5, help="how many labels to list per image (at most the classes)"
    )
    parser.add_argument(
        "--min-confidence", type=float, default=None, metavar="P",
        help="mark predictions whose calibrated probability is below P as 'unsure', and print what P gives on the "
        "run's validation split (needs the run's data where it was)",
    )  # fmt: skip
    add_batch_size(parser, 64, "images per forward pass", dest="batch_size")
    add_device(parser)
    add_workers(parser, "image-decoding processes")
    parsed = parser.parse_args(argv)
    if parsed.min_confidence is not None and not 0 < parsed.min_confidence < 1:
        parser.error(f"--min-confidence must lie between 0 and 1, got {parsed.min_confidence}")
    return frozen(PredictConfig, parsed)


# --------------------------------------------------------------------------------------------- the inputs
def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMG_EXTENSIONS


def collect_inputs(inputs: Sequence[Path]) -> list[Path]:
    """Every image the inputs name, in the order given (a folder's images sorted by path)."""
    found: list[Path] = []
    for entry in inputs:
        if entry.is_dir():
            found += images_under(entry)
        elif entry.suffix.lower() in (".csv", ".txt"):
            found += read_list(entry)
        else:
            found.append(entry)  # a missing or unreadable file is reported with the others, not fatal
    if not found:
        raise UserError(
            f"No images found in {' '.join(map(str, inputs))}. Pass image files ({', '.join(IMG_EXTENSIONS)}), "
            "folders holding them, or a .csv/.txt list of their paths."
        )
    return found


def images_under(folder: Path) -> list[Path]:
    """The image files under `folder`, at any depth, sorted; hidden files and folders are skipped."""
    found = []
    for root, folders, names in os.walk(folder):
        folders[:] = [name for name in folders if not name.startswith(".")]
        found += [Path(root) / name for name in names if not name.startswith(".") and is_image(Path(name))]
    return sorted(found)


def read_list(path: Path) -> list[Path]:
    """The paths a .csv (column 'path', else the first) or .txt (one a line) lists, relative to its folder."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"The list {path} cannot be read ({err}). Pass a text file of image paths.") from err
    if path.suffix.lower() == ".txt":
        names = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        rows = list(csv.reader(io.StringIO(text)))
        if not rows:
            return []
        column = rows[0].index("path") if "path" in rows[0] else 0
        names = [row[column] for row in rows[1:] if len(row) > column and row[column].strip()]
    return [Path(name) if Path(name).is_absolute() else path.parent / name for name in names]


class ImageFiles(Dataset):
    """(uint8 image at the run's size, position, error): a file that cannot be read gives its reason instead."""

    def __init__(self, paths: list[Path], size: tuple[int, int]) -> None:
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, position: int) -> tuple[torch.Tensor | None, int, str | None]:
        try:  # decoded exactly as the run's images were
            return decode(open_image, self.paths[position], self.size), position, None
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
            return None, position, f"{type(err).__name__}: {err}"


def keep_lists(batch: list) -> list:
    return batch


# ------------------------------------------------------------------------------------------ the predictions
@dataclass
class Predictions:
    paths: list[Path]
    logits: torch.Tensor  # (n, classes), float32, for the images read
    skipped: list[tuple[Path, str]]


@torch.inference_mode()
def predict_files(run: FinishedRun, paths: list[Path], precision: Precision, batch_size: int, workers: int,
                  model: torch.nn.Module | None = None) -> Predictions:  # fmt: skip
    """The run's logits for every readable file of `paths`, batched on the device, normalised as the run did."""
    model = model if model is not None else load_model(run, precision.device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = DataLoader(ImageFiles(paths, run.image_size), batch_size=batch_size, num_workers=workers,
                        collate_fn=keep_lists, pin_memory=precision.device.type == "cuda")  # fmt: skip
    mean = 255 * torch.tensor(run.normalisation[0], device=precision.device).view(1, 3, 1, 1)
    std = 255 * torch.tensor(run.normalisation[1], device=precision.device).view(1, 3, 1, 1)
    read, outputs, skipped = [], [], []
    for batch in progress(batches_of(loader), "predict"):
        images, positions = batch
        skipped += [(paths[p], error) for _, p, error in positions if error is not None]
        ok = [p for _, p, error in positions if error is None]
        if not ok:
            continue
        with precision.autocast():
            logits = model(precision.to_device((images.to(precision.device).float() - mean) / std))
        outputs.append(logits.float().cpu())
        read += [paths[p] for p in ok]
    logits = torch.cat(outputs) if outputs else torch.empty(0, len(run.classes))
    return Predictions(read, logits, skipped)


def batches_of(loader: DataLoader) -> Iterator[tuple[torch.Tensor, list]]:
    """(stacked readable images, every item of the batch) per batch; the second element's length counts images
    for the progress line."""
    for batch in loader:
        images = [image for image, _, error in batch if error is None]
        yield (torch.stack(images) if images else torch.empty(0)), batch


def rows(run: FinishedRun, found: Predictions, top_k: int, min_confidence: float | None) -> list[dict]:
    """One record per image: the prediction, its raw and calibrated probability, and the top-k labels."""
    k = min(top_k, len(run.classes))
    raw = found.logits.double().softmax(1)
    calibrated = (found.logits.double() / (run.temperature or 1.0)).softmax(1)
    out = []
    for index, path in enumerate(found.paths):
        top = calibrated[index].topk(k)  # the temperature never changes the order
        confidence = float(top.values[0])
        status = "unsure" if min_confidence is not None and confidence < min_confidence else "ok"
        best = int(top.indices[0])
        row = {"path": str(path), "prediction": run.classes[best], "status": status,
               "probability": round(float(raw[index, best]), 6), "calibrated": round(confidence, 6)}  # fmt: skip
        for rank, label in enumerate(top.indices.tolist(), start=1):
            row[f"label_{rank}"] = run.classes[label]
            row[f"probability_{rank}"] = round(float(raw[index, label]), 6)
            row[f"calibrated_{rank}"] = round(float(calibrated[index, label]), 6)
        out.append(row)
    return out


def write_rows(records: list[dict], path: Path) -> None:
    """CSV (cells that a spreadsheet would run as formulas are quoted with a leading apostrophe) or JSON lines."""
    if path.suffix.lower() == ".jsonl":
        text = "".join(json.dumps(record) + "\n" for record in records)
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(records[0]) if records else ["path"], lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: spreadsheet_safe(v) for k, v in record.items()} for record in records)
        text = buffer.getvalue()
    atomic_write(path, lambda file: file.write(text.encode()))


def spreadsheet_safe(value: object) -> object:
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return value


# ------------------------------------------------------------------------------------------------ abstention
def abstention_on_validation(run: FinishedRun, threshold: float, device: str, workers: int) -> str:
    """What `--min-confidence threshold` gives on the run's validation split: share kept and accuracy of those."""
    if run.temperature is None or not run.record.get("n_val"):
        return (
            f"--min-confidence {threshold:g}: the run has no validation split (--protocol paper, or an evaluation), "
            "so what this threshold keeps cannot be measured without touching the test set."
        )
    job, model, batches = reopen_split(run.folder, "val", device, workers)
    logits, labels = predict_split(model, batches, job.precision, "validation")
    confidence, predicted = (logits.double() / run.temperature).softmax(1).max(1)
    kept = confidence >= threshold
    accuracy = 100 * float((predicted[kept] == labels[kept]).double().mean()) if kept.any() else float("nan")
    return (
        f"--min-confidence {threshold:g} on the run's validation split ({len(labels)} images): keeps "
        f"{100 * float(kept.double().mean()):.1f}% of them, {accuracy:.2f}% of which are right (all: "
        f"{100 * float((predicted == labels).double().mean()):.2f}%)."
    )


def check_out(path: Path) -> None:
    if path.suffix.lower() not in (".csv", ".jsonl"):
        raise UserError(f"--out {path} must end in .csv or .jsonl (JSON lines).")
    check_new_file(path)


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    check_out(config.out)
    run = open_finished(config.run)
    paths = collect_inputs(config.inputs)
    precision = make_precision(resolve_device(config.device))
    if config.min_confidence is not None:
        print(abstention_on_validation(run, config.min_confidence, config.device, config.workers))
    found = predict_files(run, paths, precision, config.batch_size, config.workers)
    records = rows(run, found, config.top_k, config.min_confidence)
    write_rows(records, config.out)
    unsure = sum(record["status"] == "unsure" for record in records)
    note = "" if run.temperature else " (the run fitted no temperature: calibrated = raw)"
    print(
        f"{len(records)} image(s) classified by {run.model_name} from {run.folder}{note}"
        + (f", {unsure} marked unsure" if config.min_confidence is not None else "")
        + f"; written to {config.out}"
    )
    if found.skipped:
        for path, reason in found.skipped:
            print(f"skipped {path}: {reason}", file=sys.stderr)
        print(f"{len(found.skipped)} file(s) could not be read and were skipped (listed above).", file=sys.stderr)
        sys.exit(SKIPPED_EXIT)


if __name__ == "__main__":
    run_cli(main)
