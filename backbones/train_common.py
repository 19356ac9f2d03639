"""The loop itself: one training epoch, evaluation, BatchNorm re-estimation, and the two-phase fit."""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from backbones.datasets.common.spec import PaperRecipe
from backbones.errors import UserError
from backbones.loading import IDENTITY_KEYS
from backbones.pipeline import DeviceBatches
from backbones.runfiles import atomic_save
from backbones.runfolder import RunFolder
from backbones.runtime import Precision, gather_shards, is_main, restore_rng, rng_state, world


def frozen_norms(model: nn.Module) -> list[nn.Module]:
    """BatchNorm layers whose weights are frozen (linear probing): they keep their pretrained statistics."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters())
    ]


def reestimated_norms(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers whose statistics `recompute_bn_stats` re-estimates: tracked, and not frozen."""
    frozen = frozen_norms(model)
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m not in frozen
    ]


def train_mode(model: nn.Module) -> None:
    model.train()
    for norm in frozen_norms(model):
        norm.eval()


def grad_scaler(precision: Precision) -> torch.amp.GradScaler:
    """The loss scaler of a training loop: active only under float16 autocast, which needs it."""
    return torch.amp.GradScaler(precision.device.type, enabled=precision.amp_dtype == torch.float16)


def train_one_epoch(
    model, loader, optimizer, scaler, precision: Precision, desc: str, log_every: float = 30.0
) -> tuple[float, float]:
    """One pass over the training data; returns (mean loss, top-1 %) counted over samples."""
    train_mode(model)
    criterion = nn.CrossEntropyLoss()
    total_loss, correct, seen = 0.0, 0, 0
    bar = progress(loader, desc, log_every)
    for images, labels in bar:
        with precision.autocast():
            logits = model(images)
            loss = criterion(logits, labels)
        value = loss.item()
        if not math.isfinite(value):
            raise Diverged(desc, "training loss", value)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total_loss += value * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{100 * correct / seen:.2f}%")
    if world()[1] > 1:  # over every process's samples
        totals = torch.tensor([total_loss, correct, seen], dtype=torch.float64, device=precision.device)
        dist.all_reduce(totals)
        total_loss, correct, seen = totals.tolist()
    return total_loss / max(seen, 1), 100 * correct / max(seen, 1)


def progress(loader, desc: str, log_every: float = 30.0):
    """`loader`, showing progress: a tqdm bar on a terminal; elsewhere (sweeps, Slurm, nohup) a line every
    `log_every` seconds with the batch, images/s, the running loss and accuracy, and the time left."""
    if sys.stderr.isatty():
        return tqdm(loader, desc=desc, leave=False)
    return ProgressLines(loader, desc, log_every)


class ProgressLines:
    """The non-terminal progress of `progress`: printed by the first process only, nothing for short passes."""

    def __init__(self, loader, desc: str, log_every: float) -> None:
        self.loader, self.desc, self.log_every, self.postfix = loader, desc, log_every, {}

    def set_postfix(self, **values: str) -> None:
        self.postfix = values

    def __iter__(self):
        started = last = time.perf_counter()
        total = len(self.loader) if hasattr(self.loader, "__len__") else None  # bench.py passes plain iterators
        images = 0
        for index, batch in enumerate(self.loader, 1):
            yield batch
            images += len(batch[1])
            now = time.perf_counter()
            if now - last >= self.log_every and index != total and is_main():
                values = "".join(f", {key} {value}" for key, value in self.postfix.items())
                left = "" if total is None else f", {(total - index) * (now - started) / index:.0f}s left"
                where = f"{index}/{total}" if total else str(index)
                print(f"{self.desc}: batch {where}, {images / (now - started):.1f} img/s{values}{left}", flush=True)
                last = now


class Diverged(UserError):
    """The loss left the finite numbers: nothing after that point is a result, so the run stops there."""

    def __init__(self, where: str, what: str, value: float) -> None:
        super().__init__(
            f"Training diverged in {where}: the {what} became {value}. Nothing from that epoch was kept (a non-finite "
            "loss is never the best checkpoint). Lower that phase's learning rate (--lr for AdamW, --sgd-lr for SGD), "
            "for example ten times, and start a new run."
        )


@dataclass
class Evaluation:
    loss: float
    top1: float  # over samples
    batch_top1: float  # the mean of each batch's top-1, as the original's scripts average it
    logits: torch.Tensor
    labels: torch.Tensor


@torch.inference_mode()
def predict(model, loader, precision: Precision, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's outputs (float32, on the CPU) and the labels for every sample of `loader`, in order."""
    model.eval()
    all_outputs, all_labels = [], []
    for images, labels in progress(loader, desc):
        with precision.autocast():
            all_outputs.append(model(images).float().cpu())
        all_labels.append(labels)
    return gather_shards(torch.cat(all_outputs)), gather_shards(torch.cat(all_labels))


def evaluate(model, loader, precision: Precision, desc: str) -> Evaluation:
    """Loss and top-1 over every sample of `loader`, and top-1 averaged over its batches (a short last batch
    weighs as much as a full one: the original's count, kept for `--protocol paper`)."""
    logits, labels = predict(model, loader, precision, desc)
    loss = nn.functional.cross_entropy(logits, labels).item()
    hits = (logits.argmax(1) == labels).float()
    batch_top1 = torch.stack([batch.mean() for batch in hits.split(loader.loader.batch_size)]).mean().item()
    return Evaluation(loss, 100 * hits.mean().item(), 100 * batch_top1, logits, labels)


@torch.no_grad()
def recompute_bn_stats(model, loader, precision: Precision, max_images: int) -> None:
    """Re-estimate BatchNorm running statistics from training images ("precise BN").

    Torchvision's MobileNetV3/EfficientNet use BN momentum 0.01, so after a short run the running statistics still
    describe the initial weights and evaluation falls to chance. A cumulative average over fresh batches fixes
    that for every backbone, and is what the checkpoint then stores.
    """
    norms = reestimated_norms(model)
    if not norms or max_images <= 0:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    train_mode(model)
    seen = 0
    for images, _ in loader:
        with precision.autocast():
            model(images)
        seen += len(images)
        if seen >= max_images:
            break
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
        if world()[1] > 1:  # each process saw its own images: average, so every process evaluates the same model
            for statistic in (m.running_mean, m.running_var):
                dist.all_reduce(statistic)
                statistic /= world()[1]


@dataclass(frozen=True)
class TrainConfig:
    """How the two phases train and when they stop: built once from the command line (`runconfig.train_config`)."""

    lr: float
    weight_decay: float
    sgd_lr: float
    patience: int
    sgd_patience: int
    max_epochs: int | None
    bn_images: int
    paper: PaperRecipe | None = None  # the original's recipe, under --protocol paper
    sgd_phase: bool = True  # False: AdamW alone (choose.py's race, whose grid is over AdamW's learning rate)
    log_every: float = 30.0  # seconds between progress lines when the output is not a terminal


@dataclass
class Trainee:
    """The model as the loop uses it: its weights, the forward that evaluates (compiled or not) and the forward
    that trains (the DistributedDataParallel wrapper under torchrun)."""

    model: nn.Module
    forward: Callable
    train_forward: Callable


@dataclass
class FitData:
    train: DeviceBatches
    select: DeviceBatches
    select_name: str  # 'val', or 'test' under --protocol paper


@dataclass
class RunOutput:
    """Where `fit` writes: best.pt and checkpoint.pt in `out`, lines through `log`; `meta` goes into best.pt.
    `on_epoch` receives the history after every epoch (first process only): history.csv, TensorBoard, or any
    logger of your own (W&B, MLflow) is one such function."""

    out: Path
    log: Callable[[str], None]
    meta: dict
    on_epoch: Callable[[list[dict]], None] | None = None


@dataclass
class Progress:
    """Where the fit stands; saved after every epoch so that a killed run continues exactly."""

    phase: int = 0
    stale: int = 0
    phase_epochs: int = 0
    best: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)


def fit(
    trainee: Trainee,
    data: FitData,
    precision: Precision,
    config: TrainConfig,
    run: RunOutput,
    resumed: dict | None = None,
) -> tuple[dict, list[dict]]:
    """The two-phase protocol. Every improvement is saved to best.pt, and each phase ends by reloading it, so
    phase 2 starts from the best weights so far and the model leaves `fit` at the selected checkpoint."""
    model = trainee.model
    scaler = grad_scaler(precision)
    progress = Progress()
    phases = optimizer_phases(config, run.log)
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        scaler.load_state_dict(resumed["scaler"])
        progress = Progress(*(resumed[key] for key in ("phase", "stale", "phase_epochs", "best", "history")))
        run.log(
            f"resuming after epoch {len(progress.history)} ({phases[progress.phase][0]}, {progress.stale} epochs "
            "without improvement)"
        )
    for index, (phase, make_optimizer, patience) in enumerate(phases):
        if index < progress.phase:
            continue
        optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad])
        if resumed is not None and index == resumed["phase"]:
            optimizer.load_state_dict(resumed["optimizer"])
            restore_rng(resumed["rng"])
        else:
            progress.phase, progress.stale, progress.phase_epochs = index, 0, 0
        while progress.stale < patience and (config.max_epochs is None or progress.phase_epochs < config.max_epochs):
            run_epoch(trainee, data, optimizer, scaler, precision, config, run, progress, phase)
        if world()[1] > 1:
            dist.barrier()  # best.pt is written by the first process
        best = torch.load(RunFolder(run.out).best, map_location=precision.device, weights_only=True)
        model.load_state_dict(best["model"])
    return progress.best, progress.history


def optimizer_phases(config: TrainConfig, log) -> list[tuple[str, Callable, int]]:
    """(name, optimizer for the trainable parameters, patience) of each phase. The original's CIFAR scripts never
    run their SGD phase, so neither does `--protocol paper` on them."""
    phases = [
        ("adamw", lambda p: torch.optim.AdamW(p, lr=config.lr, weight_decay=config.weight_decay), config.patience),
        ("sgd", lambda p: torch.optim.SGD(p, lr=config.sgd_lr, momentum=0.9), config.sgd_patience),
    ]
    if not config.sgd_phase:
        return phases[:1]
    if config.paper is not None and not config.paper.sgd_phase:
        log("The original's script for this dataset never runs its SGD phase (its patience counter is not reset), "
            "so under --protocol paper neither does this run.")  # fmt: skip
        return phases[:1]
    return phases


def run_epoch(trainee, data: FitData, optimizer, scaler, precision, config, run: RunOutput, progress, phase) -> None:
    """Train one epoch, re-estimate BatchNorm, score the selection split, keep the best, save the progress."""
    epoch = len(progress.history) + 1
    started = time.perf_counter()
    data.train.set_epoch(epoch)  # the sampler's order and the augmentation draws
    train_loss, train_top1 = train_one_epoch(
        trainee.train_forward, data.train, optimizer, scaler, precision, f"epoch {epoch} {phase}", config.log_every
    )
    train_pass = time.perf_counter() - started
    recompute_bn_stats(trainee.forward, data.train, precision, config.bn_images)
    selection = evaluate(trainee.forward, data.select, precision, data.select_name)
    if not math.isfinite(selection.loss):
        raise Diverged(f"epoch {epoch} {phase}", f"{data.select_name} loss", selection.loss)
    progress.phase_epochs += 1
    score, improved = judge(selection, progress.best, config.paper)
    if improved:
        progress.best = {"epoch": epoch, "top1": score, "loss": selection.loss}
        if is_main():
            meta = {**run.meta, "epoch": epoch, "phase": phase}
            atomic_save({"model": trainee.model.state_dict(), "meta": meta}, RunFolder(run.out).best)
    progress.stale = next_stale(progress.stale, improved, config.paper)
    seconds = time.perf_counter() - started
    name = data.select_name
    progress.history.append(
        {
            "epoch": epoch,
            "phase": phase,
            "train_loss": round(train_loss, 6),
            "train_top1": round(train_top1, 4),
            f"{name}_loss": round(selection.loss, 6),
            f"{name}_top1": round(score, 4),
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(seconds, 2),
            "train_pass_seconds": round(train_pass, 2),
        }
    )
    if is_main():
        save_progress(trainee.model, optimizer, scaler, progress, run)
        if run.on_epoch is not None:
            run.on_epoch(progress.history)
    run.log(
        f"epoch {epoch:3d} {phase:5s} train loss {train_loss:.4f} acc {train_top1:6.2f}% | {name} "
        f"loss {selection.loss:.4f} acc {score:6.2f}% | {seconds:5.1f}s" + ("  *best*" if improved else "")
    )


def next_stale(stale: int, improved: bool, paper: PaperRecipe | None) -> int:
    """The patience counter after an epoch: epochs since the last improvement (under `paper`, the original's count,
    which on its '>' scripts includes the improving epoch itself)."""
    if not improved:
        return stale + 1
    return paper.stale_after_improvement if paper is not None else 0


def judge(selection: Evaluation, best: dict, paper: PaperRecipe | None) -> tuple[float, bool]:
    """(score, whether it improves on `best`): higher top-1, ties broken by lower loss; under `paper` the
    batch-averaged top-1 alone, a tie counting where the original's script compares with '>='."""
    if paper is None:
        score = selection.top1
        return score, not best or (score, -selection.loss) > (best["top1"], -best["loss"])
    score = selection.batch_top1
    return score, not best or score > best["top1"] or (paper.ties_improve and score == best["top1"])


def save_progress(model, optimizer, scaler, progress: Progress, run: RunOutput) -> None:
    """Everything needed to continue from here if the run is killed."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        **dataclasses.asdict(progress),
        "rng": rng_state(),
        "config": run.meta["config"],
        "identity": {k: run.meta[k] for k in IDENTITY_KEYS},
    }
    atomic_save(state, RunFolder(run.out).resume)
