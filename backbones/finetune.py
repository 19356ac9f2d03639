"""The fine-tune entry every dataset script calls: prepare the run, train it, write what it measured.

The protocol: phase 1 AdamW until `--patience` epochs without validation improvement, reload the best weights,
phase 2 SGD by the same rule; the test set is evaluated once, on the best checkpoint. `--protocol paper` is the
original's recipe instead, selection on the test set included, and says so.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn

from backbones import models
from backbones.cost import gflops, peak_memory_mb, speed
from backbones.datasets.common.spec import IMAGENET_MEAN, IMAGENET_STD, Catalog, DatasetSpec, PaperRecipe
from backbones.errors import UserError, run_cli
from backbones.loading import (
    DataConfig,
    cached_splits,
    check_out_folder,
    image_cache,
    load_splits,
    split_batches,
    split_identity,
    warn_on_stderr,
)
from backbones.metrics import class_weighted_batch_accuracy, fit_temperature, quality, reliability_diagram
from backbones.pipeline import DeviceBatches
from backbones.record import SCHEMA
from backbones.runconfig import RunConfig, resolve
from backbones.runfiles import (
    RunLog,
    append_result,
    check_evaluation_split,
    check_results_table,
    git_commit,
    library_versions,
    make_out_dir,
    resume_state,
    tensorboard_logger,
    write_history,
    write_json,
)
from backbones.runfolder import RunFolder
from backbones.runtime import (
    Precision,
    check_memory,
    is_main,
    make_precision,
    out_of_memory_as_user_error,
    resolve_device,
    seed_everything,
    start_distributed,
    world,
)
from backbones.train_common import FitData, RunOutput, Trainee, evaluate, fit


@dataclass
class Prepared:
    """A run as its command line, data and device define it, checked before any training."""

    config: RunConfig
    precision: Precision
    catalog: Catalog
    samples: pd.DataFrame
    identity: dict

    @property
    def spec(self) -> DatasetSpec:
        return self.config.spec

    @property
    def data(self) -> DataConfig:
        return self.config.data

    def count(self, split: str) -> int:
        return int((self.samples["split"] == split).sum())

    def batches(self, log, splits: tuple[str, ...]) -> Callable[..., DeviceBatches]:
        """`batches(split, train=False)`: device-ready batches of a split, the images of `splits` decoded once into
        the image cache (the splits a command reads, and no other)."""
        cache = image_cache(self.spec, self.data, self.catalog, self.samples, log, splits)

        def of(split: str, train: bool = False) -> DeviceBatches:
            return split_batches(self.spec, self.data, self.catalog, self.samples, split, self.precision, train, cache)

        return of


def main(spec: DatasetSpec, argv: list[str] | None = None) -> dict:
    """Fine-tune (or with --eval-only, evaluate) one backbone on one dataset; returns the metrics written."""
    warned: list[str] = []  # shown at once, and kept in log.txt once the run folder exists
    job = prepare(spec, sys.argv[1:] if argv is None else argv, warned)
    trainee, params = build_model(job)
    out, log, resumed = open_run_folder(job, params)
    for message in warned:
        log.to_file(f"warning: {message}")
    config = job.config
    loader = job.batches(log, cached_splits(config.data, not config.eval_only))

    best, history, train_seconds, train_loader = {}, [], 0.0, None
    if not config.eval_only:
        train_loader = loader("train", train=True)
        select = config.protocol.selection
        started = time.perf_counter()
        best, history = fit(
            trainee,
            FitData(train_loader, loader(select), select),
            job.precision,
            config.train,
            RunOutput(out, log, checkpoint_meta(job), epoch_hooks(job, out)),
            resumed,
        )
        earlier = sum(h["seconds"] for h in resumed["history"]) if resumed else 0.0  # before the run was killed
        train_seconds = time.perf_counter() - started + earlier
    temperature = calibrate(job, trainee, loader, log)
    test = evaluate(trainee.forward, loader("test"), job.precision, "test")
    if not is_main():  # the first process measures the cost and writes the files
        dist.destroy_process_group()
        return {}
    cost = measure_cost(trainee, job, history, train_loader)
    scores = quality(test.logits.numpy(), test.labels.numpy(), len(job.catalog.classes), temperature)
    metrics = run_record(job, test, scores, cost, best, history, train_seconds, params, out)
    write_outputs(job, test, scores, metrics, out)
    report(job, test, metrics, temperature, log)
    if world()[1] > 1:
        dist.destroy_process_group()
    return metrics


def prepare(
    spec: DatasetSpec, argv: list[str] | None, warned: list[str] | None = None, base: dict | None = None
) -> Prepared:
    """Parse and check everything a run needs before it touches a model: the flags (on top of `base`, as
    `resolve` takes them), the checkpoint to evaluate, the device, the data and its split."""
    config = resolve(spec, argv, base)
    if not config.eval_only:
        check_results_table(config.results)
    seed_everything(config.seed)
    start_distributed(config.device)
    device = resolve_device(config.device)
    check_memory(config.batch_size, config.image_size, device)
    data = config.data

    def warn(message: str) -> None:
        warn_on_stderr(message)
        if warned is not None:
            warned.append(message)

    catalog, samples = load_splits(spec, data, warn)
    check_out_folder(config.out, data.data, catalog)
    job = Prepared(config, make_precision(device), catalog, samples, split_identity(spec, data, catalog, samples))
    check_prepared(job)
    return job


def check_prepared(job: Prepared) -> None:
    """A checkpoint for other classes or another split, or a split left empty, stops the run here."""
    spec, config, meta = job.spec, job.config, job.config.weights.meta
    num_classes = len(job.catalog.classes)
    trained_for = meta.get("num_classes", num_classes)
    if trained_for != num_classes:
        raise UserError(
            f"--weights {config.flags['weights']} was trained for {trained_for} classes ({meta.get('dataset')}), "
            f"but {spec.title} has {num_classes}; evaluating it would score an untrained head. Pass a "
            f"checkpoint trained on {spec.title}."
        )
    if config.eval_only:
        check_evaluation_split(config.flags, meta, job.identity)
    n_train, n_val, n_test = (job.count(split) for split in ("train", "val", "test"))
    if n_train == 0 or n_test == 0 or (config.protocol.selection == "val" and not config.eval_only and n_val == 0):
        raise UserError(
            f"{spec.title} under {config.data.data} gives {n_train} training, {n_val} validation and "
            f"{n_test} test images; every split needs at least one. {split_advice(job)}"
        )


def split_advice(job: Prepared) -> str:
    """What will actually give every split an image: a class keeps at least one training image, so a class with one
    image left after the test split can give none to validation, whatever --val-fraction says."""
    pool = job.samples[job.samples["split"].isin(("train", "val", "unused"))]
    largest = int(pool["label"].value_counts().max()) if len(pool) else 0
    if job.count("test") and job.count("val") == 0 and largest < 2:
        return (
            "Every class has at most one image left once its test image is held out, and a class keeps at least "
            "one for training, so no --val-fraction can carve a validation split. Add images (three per class at "
            "least: test, validation, training), or give the validation images yourself (imagefolder: "
            "--data/train/, --data/val/ and --data/test/ folders)."
        )
    return "Add data, or raise --val-fraction (for the validation split) or --test-size where the dataset has one."


def build_model(job: Prepared) -> tuple[Trainee, int]:
    """The backbone with its new head on the device, and its parameter count."""
    config, device = job.config, job.precision.device
    model = models.create_model(config.model, len(job.catalog.classes), config.weights)
    if config.finetune == "head":
        models.freeze_all_but_head(model, config.model)
    params = sum(p.numel() for p in model.parameters())
    model.to(device)
    if job.precision.channels_last:
        model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if config.compile else model
    train_forward = forward
    if world()[1] > 1:  # gradients are averaged over the processes; evaluation runs on the plain model
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        train_forward = torch.compile(ddp) if config.compile else ddp
    return Trainee(model, forward, train_forward), params


def open_run_folder(job: Prepared, params: int) -> tuple[Path, RunLog, dict | None]:
    """The run's folder (new, or the killed run's with --resume), its config.json, split.csv and first log lines."""
    config = job.config
    name = f"{job.spec.name}-{config.model.replace(':', '_')}-s{config.seed}"
    resumed = resume_state(config.out, config.flags, job.identity) if config.resume else None
    out = [make_out_dir(config.out, name, resume=config.resume) if is_main() else None]
    if world()[1] > 1:
        dist.broadcast_object_list(out)  # the folder the first process made
    out = out[0]
    files = RunFolder(out)
    if is_main() and not files.config.exists():  # the command as given; a resumed run keeps the first
        write_json(config.to_json(), files.config)
    log = RunLog(files.log)
    precision = job.precision
    log(
        f"{job.spec.title}: {job.count('train')} train / {job.count('val')} val / {job.count('test')} test images, "
        f"{len(job.catalog.classes)} classes; {config.model} ({params / 1e6:.1f}M params, weights "
        f"{config.flags['weights']}) at {config.image_size[0]}x{config.image_size[1]} on {precision.device}"
        f"{' with ' + str(precision.amp_dtype) if precision.amp_dtype else ''}; {describe_mode(job)}; seed "
        f"{config.seed}; writing to {out}"
    )
    if config.protocol.recipe is not None:
        log(
            "PROTOCOL paper: checkpoints are chosen on the TEST set, as in the original benchmark. The accuracy "
            "below is optimistically biased; use it only to compare with the original's numbers. The original's "
            f"recipe: {describe_recipe(config.protocol.recipe, job.spec, config)}."
        )
    if is_main():
        split = job.samples[["sample", "label", "split"]]  # names quoted: a file name may hold a line break
        split.to_csv(files.split, index=False, quoting=csv.QUOTE_NONNUMERIC)
    return out, log, resumed


def describe_mode(job: Prepared) -> str:
    config, data = job.config, job.config.data
    mode = f"evaluation of {config.flags['weights']}" if config.eval_only else f"protocol {config.protocol.name}"
    if not config.eval_only:
        mode += ", linear probe (backbone frozen)" if config.finetune == "head" else ", full fine-tuning"
    if data.shots is not None or data.train_fraction < 1:
        size = f"{data.shots} per class" if data.shots is not None else f"{data.train_fraction:g} of each class"
        mode += f", training data: {size} ({job.count('unused')} images unused)"
    return mode


def describe_normalisation(paper: PaperRecipe, spec: DatasetSpec) -> str:
    """Which statistics the original normalised with, in words that say what they are."""
    train = paper.train_norm or (spec.mean, spec.std)
    test = paper.test_norm or (spec.mean, spec.std)
    if train[0] == (0.0, 0.0, 0.0) and all(abs(s - 1 / 255) < 1e-12 for s in train[1]):
        return "no normalisation: pixel values of 0-255 went into the model, as its ToTensor left them"
    if train == test == (IMAGENET_MEAN, IMAGENET_STD):
        return "ImageNet's statistics"
    if train == test:
        return f"the statistics mean {train[0]}, std {train[1]}"
    return "its own statistics of the train images for training and of the test images for testing"


def describe_recipe(paper: PaperRecipe, spec: DatasetSpec, config: RunConfig) -> str:
    """The original's recipe in words, for the run's log."""
    augment = {
        "none": "no augmentation",
        "trivialaugment": "TrivialAugmentWide after the resize",
        "trivialaugment-first": "TrivialAugmentWide before the resize",
    }[paper.augment]
    norm = describe_normalisation(paper, spec)
    train = config.train
    phases = f"patience {train.patience} (AdamW)" + (f" and {train.sgd_patience} (SGD)" if paper.sgd_phase else "")
    return (
        f"{augment}, no flips; {norm}; no BatchNorm re-estimation (--bn-images {train.bn_images}); {phases}; AdamW "
        f"lr {train.lr:g}; a checkpoint replaces the best on {'>=' if paper.ties_improve else '>'} batch-averaged "
        f"test top-1 (test batches of {config.batch_size * paper.eval_batch_multiple})"
    )


def epoch_hooks(job: Prepared, out: Path):
    """What runs after every epoch: history.csv, and TensorBoard's scalars with --tensorboard. A logger of your own
    (W&B, MLflow) is one more function of the history, added here."""
    hooks = [lambda history: write_history(history, RunFolder(out).history)]
    if job.config.tensorboard:
        hooks.append(tensorboard_logger(RunFolder(out).tensorboard))

    def on_epoch(history: list[dict]) -> None:
        for hook in hooks:
            hook(history)

    return on_epoch


def checkpoint_meta(job: Prepared) -> dict:
    """What best.pt records beside the weights: enough to evaluate it later on exactly its own test split."""
    return {
        "dataset": job.spec.name,
        "model": job.config.model,
        "num_classes": len(job.catalog.classes),
        "classes": job.catalog.classes,
        "seed": job.config.seed,
        "image_size": list(job.config.image_size),
        "config": json.dumps(job.config.flags),
        **job.identity,
    }


def calibrate(job: Prepared, trainee: Trainee, loader, log) -> float | None:
    """The softmax temperature fitted on the validation split (the test set stays untouched); None without one."""
    if not job.count("val") or job.config.protocol.selection != "val":
        return None
    val = evaluate(trainee.forward, loader("val"), job.precision, "val")
    temperature = fit_temperature(val.logits.numpy(), val.labels.numpy())
    if temperature is None:
        log(
            "Temperature scaling: the validation split is classified with full confidence, so the fitted "
            "temperature would only be the search's bound; T is kept at 1."
        )
        return 1.0
    return temperature


def measure_cost(trainee: Trainee, job: Prepared, history: list[dict], train_loader) -> dict:
    """What the backbone costs: FLOPs per image, inference speed, training speed and peak memory."""
    size, precision, batch_size = job.config.image_size, job.precision, job.config.batch_size
    cost = {"gflops": gflops(trainee.model, size, precision.device)}
    cost.update(speed(trainee.forward, size, batch_size, precision))
    cost["seconds_per_epoch"] = float(np.mean([h["seconds"] for h in history])) if history else None
    cost["train_images_per_s"] = None
    if history and train_loader is not None:
        loader = train_loader.loader
        per_epoch = len(loader) * batch_size if loader.drop_last else len(loader.dataset)
        cost["train_images_per_s"] = per_epoch * len(history) / sum(h["train_pass_seconds"] for h in history)
    cost["peak_memory_mb"], cost["peak_memory_kind"] = peak_memory_mb(precision.device)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in cost.items()}


def run_record(job, test, scores, cost, best, history, train_seconds, params, out) -> dict:
    """The run's metrics.json: what it measured with its full configuration (the fields `record.py` names)."""
    config, spec, device, paper = job.config, job.spec, job.precision.device, job.config.protocol.recipe
    data = config.data
    return {
        "schema": SCHEMA,
        "dataset": spec.name,
        **job.identity,
        "data": str(data.data.resolve()),
        "domain": spec.domain,
        "model": config.model,
        "weights": config.flags["weights"],
        "seed": config.seed,
        "protocol": config.protocol.name,
        "eval_only": config.eval_only,
        "selection": None if config.eval_only else config.protocol.selection,
        "num_classes": len(job.catalog.classes),
        **{f"n_{split}": job.count(split) for split in ("train", "val", "test", "unused")},
        "train_fraction": data.train_fraction,
        "shots": data.shots,
        "finetune": config.finetune,
        "image_size": list(config.image_size),
        "default_image_size": list(spec.image_size),
        **{k: round(v, 6) if isinstance(v, float) else v for k, v in scores.items()},
        "test_loss": round(test.loss, 6),
        "top1_batch_mean": round(test.batch_top1, 4) if paper else None,  # what the original reports
        "paper_final_metric": final_metric(job, test),
        "paper_recipe": dataclasses.asdict(paper) if paper else None,
        "epochs": len(history),
        "best_epoch": best.get("epoch"),
        "best_selection_top1": round(best["top1"], 4) if best else None,
        "train_seconds": round(train_seconds, 2),
        "params": params,
        **cost,
        "device": str(device),
        "processes": world()[1],
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        "amp_dtype": str(job.precision.amp_dtype) if job.precision.amp_dtype else None,
        "history": history,
        "config": config.flags,
        "versions": library_versions(),
        "git_commit": git_commit(),
        "finished": datetime.now().isoformat(timespec="seconds"),
        "out": str(out),
    }


def final_metric(job: Prepared, test) -> dict | None:
    """The figure the original's script prints last where it is not top-1 (BreakHis: class-weighted accuracy
    averaged over test batches), under `--protocol paper`; None otherwise."""
    paper = job.config.protocol.recipe
    if paper is None or paper.final_metric is None:
        return None
    batch = job.config.batch_size * paper.eval_batch_multiple
    value = class_weighted_batch_accuracy(test.logits.numpy(), test.labels.numpy(), batch)
    return {"name": paper.final_metric, "value": round(value, 4), "test_batch_size": batch}


def write_outputs(job: Prepared, test, scores: dict, metrics: dict, out: Path) -> None:
    """The test outputs, confusion matrix and reliability diagram, metrics.json, then the results-table row."""
    logits, labels, classes = test.logits.numpy(), test.labels.numpy(), job.catalog.classes
    files = RunFolder(out)
    np.savez_compressed(files.test_outputs, logits=logits.astype(np.float32), labels=labels)
    pd.DataFrame(scores["confusion_matrix"], index=classes, columns=classes).rename_axis("true \\ predicted").to_csv(
        files.confusion
    )
    reliability_diagram(logits, labels, files.reliability, f"{job.spec.title}, {job.config.model}")
    write_json(metrics, files.metrics)
    files.resume.unlink(missing_ok=True)  # finished: best.pt is what is worth keeping
    if not job.config.eval_only:
        size = "x".join(map(str, job.config.image_size))
        append_result({**metrics["config"], **metrics, "image_size": size}, job.config.results)  # with its recipe


def report(job: Prepared, test, metrics: dict, temperature: float | None, log) -> None:
    """The run's last lines, ending with the contract's `Top-1 accuracy: NN.NN%`."""
    log(
        ("top-5 n/a (5 classes or fewer)" if metrics["top5"] is None else f"top-5 {metrics['top5']:.2f}%")
        + f", balanced accuracy {metrics['balanced_accuracy']:.2f}%, macro-F1 "
        f"{metrics['macro_f1']:.2f}% | NLL {metrics['nll']:.4f}, Brier {metrics['brier']:.4f}, ECE "
        f"{metrics['ece']:.4f}"
        + (f" ({metrics['ece_temperature_scaled']:.4f} at T={temperature:.3f})" if temperature else "")
        + f" | {metrics['gflops']:.2f} GFLOPs, {metrics['latency_ms_batch1']:.1f} ms at batch 1, "
        f"{metrics['throughput_images_per_s']:.0f} img/s at batch {job.config.batch_size}, peak memory "
        + (f"{metrics['peak_memory_mb']:.0f} MB" if metrics["peak_memory_mb"] is not None else "not measurable here")
    )
    log(f"{metrics['epochs']} epochs in {metrics['train_seconds']:.0f}s; files in {metrics['out']}")
    if metrics["paper_final_metric"] is not None:
        final = metrics["paper_final_metric"]
        log(f"The original's last figure, {final['name']} accuracy averaged over test batches: {final['value']:.2f}%")
    if job.config.protocol.recipe is not None:
        log(f"Top-1 over test images: {test.top1:.2f}%; averaged over test batches as the original does:")
    log(f"Top-1 accuracy: {(test.batch_top1 if job.config.protocol.recipe else test.top1):.2f}%")


def run(spec: DatasetSpec, argv: list[str] | None = None) -> None:
    """Entry point of a dataset script (and of `backbones train <dataset>`)."""

    def guarded() -> None:
        with out_of_memory_as_user_error():
            main(spec, argv)

    run_cli(guarded)
