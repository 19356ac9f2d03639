"""A finished run read back: its fine-tuned model and, where the data is at hand, its own splits, exactly as the
run evaluated them. robustness.py, predict.py and export.py all start here, so none of them can feed a model
differently from the run that trained it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from backbones import datasets, models
from backbones.datasets.common.spec import Normalisation
from backbones.errors import UserError
from backbones.finetune import Prepared, build_model, prepare
from backbones.loading import evaluation_normalisation
from backbones.pipeline import DeviceBatches
from backbones.runconfig import RELAUNCH_DROPS, read_command
from backbones.runfolder import RunFolder
from backbones.runtable import read_run


def needed(folder: Path) -> list[Path]:
    """The files a finished run's model and splits are read back from."""
    files = RunFolder(folder)
    return [files.metrics, files.config, files.best, files.split]


@dataclass(frozen=True)
class FinishedRun:
    """What a finished run says about how to feed its model, from its own record."""

    folder: Path
    record: dict  # metrics.json
    weights: models.Weights  # best.pt, read once
    classes: list[str]
    image_size: tuple[int, int]
    normalisation: Normalisation  # (mean, std) per channel in [0, 1], as the run's test images were normalised
    temperature: float | None  # fitted on the validation split; None where the run had none (--protocol paper)

    @property
    def model_name(self) -> str:
        return self.record["model"]


def open_finished(folder: Path) -> FinishedRun:
    """The run in `folder`, after checking that it finished and holds what reading it back needs."""
    if not folder.is_dir():
        raise UserError(f"--run {folder} is not a folder. Pass the folder of a finished run (runs/<run>).")
    missing = [path.name for path in needed(folder) if not path.exists()]
    if missing:
        raise UserError(
            f"--run {folder} has no {', '.join(missing)}: it is not a finished run written by a dataset script "
            "(a run that was killed has no metrics.json; see its log.txt). Pass the folder of a finished run."
        )
    record, reason = read_run(folder)
    if record is None:
        raise UserError(f"--run {folder} cannot be used: {reason}.")
    weights = models.Weights.parse(str(RunFolder(folder).best))
    classes = weights.meta.get("classes")
    if not isinstance(classes, list) or len(classes) != record["num_classes"]:
        raise UserError(
            f"--run {folder}: best.pt does not record the run's {record['num_classes']} class names (written by an "
            "older version of this tool?). Fine-tune again with this version to use the run here."
        )
    spec = datasets.spec(record["dataset"])
    paper = spec.paper_recipe(record["dataset_options"]) if record["protocol"] == "paper" else None
    return FinishedRun(
        folder=folder,
        record=record,
        weights=weights,
        classes=[str(name) for name in classes],
        image_size=(int(record["image_size"][0]), int(record["image_size"][1])),
        normalisation=evaluation_normalisation(spec, paper),
        temperature=record.get("temperature"),
    )


def load_model(run: FinishedRun, device: torch.device) -> nn.Module:
    """The run's fine-tuned model from its best.pt, in evaluation mode on `device`."""
    model = models.create_model(run.model_name, len(run.classes), run.weights)
    return model.to(device).eval()


def reopen_split(folder: Path, split: str, device: str, workers: int) -> tuple[Prepared, nn.Module, DeviceBatches]:
    """The run's model and the batches of one of its splits, exactly as the run evaluated them: its flags from
    config.json, its best.pt, its split (checked against the split recorded in best.pt and, image by image,
    against split.csv; never drawn anew). The run's data must be where it was (`--data` in its record)."""
    for path in needed(folder):
        if not path.exists():
            raise UserError(f"{folder} has no {path.name}, so its {split} split or weights cannot be read back.")
    files = RunFolder(folder)
    record, reason = read_run(folder)  # checked again: the folder may have changed since it was listed
    if record is None or "data" not in record:
        raise UserError(f"{folder} cannot be read back: {reason or 'metrics.json does not say where its data is'}.")
    spec = datasets.spec(record["dataset"])
    trained = read_command(spec, files.config)
    base = {name: value for name, value in trained.items() if name not in (*RELAUNCH_DROPS, "tensorboard", "compile")}
    evaluation = ["--weights", str(files.best), "--eval-only", "--data", record["data"]]
    # refuses a split other than the one recorded in best.pt
    job = prepare(spec, [*evaluation, "--device", device, "--workers", str(workers)], base=base)
    now = job.samples.loc[job.samples["split"] == split, ["sample", "label"]].reset_index(drop=True)
    if not saved_split(files.split, split).equals(now):
        raise UserError(
            f"{folder}/split.csv lists other {split} images than the data under {record['data']} gives for this "
            "run now; the run's split cannot be reproduced. Was the data changed after the run?"
        )
    trainee, _ = build_model(job)
    return job, trainee.model, job.batches(lambda message: None, (split,))(split)


def saved_split(path: Path, split: str) -> pd.DataFrame:
    """The (sample, label) rows of `split` in a run's split.csv; a file that is not one reads as holding none, so
    that it fails the comparison with a clear message rather than a traceback."""
    try:
        saved = pd.read_csv(path, dtype={"sample": str})
        return saved.loc[saved["split"] == split, ["sample", "label"]].reset_index(drop=True)
    except (OSError, ValueError, KeyError):  # pandas' parser errors are ValueErrors
        return pd.DataFrame(columns=["sample", "label"])
