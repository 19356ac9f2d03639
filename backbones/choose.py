"""Choose a backbone within a budget: rank, race, confirm, answer.

Usage: python choose.py --dataset imagefolder --data ~/my_photos --budget 4h     (or --budget 300: epochs in all)

1. Rank every candidate from frozen features (rank.py); with --keep K only the best K by LogME race.
2. Race (backbone, learning rate) pairs by successive halving on the validation split (`race.py`): a few AdamW
   epochs each, the best 1/eta go on, continuing from where they stopped, until the race's share of the budget
   is spent. A time budget first prices an epoch of each racing backbone by timing a few training steps.
3. Confirm the finalists, each at its best learning rate, with several seeds under the normal protocol (both
   phases, selection on validation, the test set evaluated once per run, at the end).
4. Answer with the report's tie statistics: the best, the tied set and the cheapest of it, what it cost against
   the full sweep, and where every other pair left the race.

Every flag of the dataset's script is accepted too (-bs, --weights, --image-size, --data, ...) and passed to every
run. Run the same command again to continue a killed `choose`: the race's state is an Optuna study in --out. Run it
several times at once (on machines sharing --out, with a database --storage) and the workers share the training.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from backbones import bench, datasets, finetune, models, rank, report
from backbones.datasets.common.spec import DatasetSpec
from backbones.errors import HelpFormatter, UserError, run_cli
from backbones.files import claim, shared_lock
from backbones.flags import add_models, add_out, positive_int
from backbones.options import build_parser, positive_float
from backbones.race import Pair, RaceState, Rung, next_rung, plan, survivors
from backbones.report_race import plot_race, race_markdown, rung_column
from backbones.runcheck import read_json
from backbones.runfiles import RunLog, read_resume_file, write_history, write_json
from backbones.runfolder import ChooseFolder, RunFolder
from backbones.runtable import finished_runs, md, read_rankings, runs_table, write_csv
from backbones.train_common import FitData, RunOutput, fit, reestimated_norms

PHASES = 2  # a confirmation run trains AdamW, then SGD: its epoch cap applies to each
SET_PER_RUN = {  # run flags choose sets itself, and what to use instead
    "-model": "--models",
    "--model": "--models",
    "--lr": "--lr-grid",
    "--seed": "--seeds",
    "--resume": "the same command again (it continues)",
    "--config": "the flags themselves",
    "--eval-only": "predict.py or export.py on a chosen run",
    "--results": "the table in --out",
    "--protocol": "nothing: choose selects on validation (the paper protocol selects on the test set)",
}


@dataclass(frozen=True)
class Budget:
    amount: float
    unit: str  # 'epochs' (of any backbone, over every run) or 'seconds' (wall time)

    def __str__(self) -> str:
        return f"{self.amount:g} {self.unit}"


def budget(text: str) -> Budget:
    """'300' (epochs in all) or a time: '90m', '4h', '3600s'."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)([hms]?)", text.strip().lower())
    if not found or float(found[1]) <= 0:
        raise argparse.ArgumentTypeError(f"expected epochs (300) or a time (90m, 4h, 3600s), got '{text}'")
    if not found[2]:
        return Budget(float(found[1]), "epochs")
    return Budget(float(found[1]) * {"h": 3600, "m": 60, "s": 1}[found[2]], "seconds")


def build_own_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Choose a backbone for a dataset within a budget: rank every candidate from frozen features, "
        "race (backbone, learning rate) pairs by successive halving on the validation split, confirm the "
        "finalists with several seeds (the test set read once per run), and recommend the best or the cheapest "
        "of those tied with it.",
        epilog="Every flag of the dataset's script (python <dataset>.py --help: -bs, --weights, --image-size, --data, "
        "--max-epochs, ...) is accepted too and passed to every run, except those choose sets per run: "
        + ", ".join(sorted({flag for flag in SET_PER_RUN if flag.startswith("--")}))
        + ". Run the same command again to continue a killed choose.",
        formatter_class=HelpFormatter,
        allow_abbrev=False,  # --seed is a run flag choose refuses, not an abbreviation of --seeds
    )
    add = parser.add_argument
    add("--dataset", required=True, choices=datasets.NAMES, metavar="DATASET", help="the dataset, by its script's name")
    add("--budget", type=budget, required=True, help="epochs over every run (300), or wall time (90m, 4h, 3600s)")
    add_models(parser, ["all"], "candidates")
    add("--keep", type=positive_int, default=None, help="race only the best K by LogME (default: every candidate)")
    add(
        "--probe-images",
        type=positive_int,
        default=None,
        metavar="N",
        help="rank from a class-stratified sample of N training images, as rank.py --probe-images: cheaper, noisier "
        "(default: every training image)",
    )
    add(
        "--lr-grid",
        type=positive_float,
        nargs="+",
        default=[3e-4, 1e-3, 3e-3],
        help="AdamW learning rates each backbone races with (default: the default 1e-3, and 3x either side)",
    )
    add("--eta", type=positive_int, default=3, help="successive halving's factor: the best 1/eta of a rung go on")
    add("--min-epochs", type=positive_int, default=1, help="epochs of the first rung; each next rung is eta times")
    add("--race-share", type=float, default=0.5, help="share of the budget for the race; the rest confirms")
    add("--finalists", type=positive_int, default=2, help="backbones confirmed with --seeds")
    add("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the confirmation (the race uses the first)")
    add_out(parser, None, "choose's folder (default: runs/choose-<dataset>)")
    add(
        "--storage",
        default=None,
        help="Optuna storage URL for the race; a database URL lets workers on several machines sharing --out join it "
        "(default: sqlite:///<out>/race.db)",
    )
    add("--dry-run", action="store_true", help="print what an epoch budget buys (rungs, confirmation) and stop")
    return parser


@dataclass(frozen=True)
class ChooseConfig:
    """choose's own settings, as its flags define them (the flags of every run travel beside them, as given)."""

    dataset: str
    budget: Budget
    models: list[str]  # registry names, aliases and 'all' resolved
    keep: int | None
    probe_images: int | None  # the ranking's sample of training images (None: all)
    lr_grid: list[float]  # sorted, each once
    eta: int
    min_epochs: int
    race_share: float
    finalists: int
    seeds: list[int]
    out: Path
    storage: str  # Optuna's storage URL
    dry_run: bool
    run_max_epochs: int | None  # the run flags' --max-epochs: a cap on the confirmation's epochs too

    @property
    def folder(self) -> ChooseFolder:
        return ChooseFolder(self.out)


def parse_args(argv: list[str]) -> tuple[ChooseConfig, DatasetSpec, list[str]]:
    """(choose's settings, the dataset, the flags for every run)."""
    own, run_flags = build_own_parser().parse_known_args(argv)
    if not 0 < own.race_share < 1:
        raise UserError(f"--race-share {own.race_share:g} must lie between 0 and 1 (the rest confirms).")
    if own.eta < 2:
        raise UserError("--eta must be at least 2: with 1 the race keeps every pair and never halves.")
    for token in run_flags:
        name = token.split("=", 1)[0]
        if name in SET_PER_RUN:
            raise UserError(f"choose sets {name} for each run itself; use {SET_PER_RUN[name]} instead.")
    spec = datasets.spec(own.dataset)
    run_parsed = build_parser(spec).parse_args([*run_flags, "-model", "placeholder"])  # its errors name the flag
    out = own.out or Path("runs") / f"choose-{spec.name}"
    config = ChooseConfig(
        dataset=own.dataset,
        budget=own.budget,
        models=models.resolve_names(own.models),
        keep=own.keep,
        probe_images=own.probe_images,
        lr_grid=sorted(set(own.lr_grid)),
        eta=own.eta,
        min_epochs=own.min_epochs,
        race_share=own.race_share,
        finalists=own.finalists,
        seeds=own.seeds,
        out=out,
        storage=own.storage or f"sqlite:///{ChooseFolder(out).study.resolve()}",
        dry_run=own.dry_run,
        run_max_epochs=run_parsed.max_epochs,
    )
    return config, spec, run_flags


# ----------------------------------------------------------------------------------------------- the folder
def open_folder(own: ChooseConfig, run_flags: list[str]) -> AbstractContextManager:
    """choose's folder: new, or the same choose's to continue (its flags saved in choose.json must match); returns
    the lock a worker holds while it takes a decision every worker of this choose shares."""
    settings = {
        "dataset": own.dataset,
        "budget": dataclasses.asdict(own.budget),
        **{key: getattr(own, key) for key in ("models", "keep", "lr_grid", "eta", "min_epochs", "race_share")},
        **{key: getattr(own, key) for key in ("finalists", "seeds")},
        "run_flags": run_flags,
        **({"probe_images": own.probe_images} if own.probe_images else {}),  # absent: a folder from before the flag
    }
    path, shared = own.folder.settings, shared_lock(own.folder.lock)
    if path.exists():  # written whole (write_json), so it is read without the lock, and a refusal leaves no lock file
        check_settings(own, settings)
        return shared
    if own.out.exists() and any(item.name != own.folder.lock.name for item in own.out.iterdir()):
        raise UserError(f"--out {own.out} exists and is not a choose's folder; give a new --out.")
    own.out.mkdir(parents=True, exist_ok=True)
    with shared:  # workers started together: the first writes choose.json, the others find it
        if path.exists():
            check_settings(own, settings)
        else:
            write_json(settings, path)
    return shared


def check_settings(own: ChooseConfig, settings: dict) -> None:
    """The same choose continues only with the same settings; the budget may change until the race starts."""
    path = own.folder.settings
    saved, problem = read_json(path)
    if problem or not isinstance(saved, dict):
        raise UserError(
            f"{path} cannot be read ({problem or 'not a JSON object'}), so what this choose was started with is "
            "unknown. Give a new --out."
        )
    if saved != settings and only_budget_changed(saved, settings) and not own.folder.pairs.exists():
        write_json(settings, path)  # the race has not started: nothing the budget decides was decided yet
    elif saved != settings:
        changed = [key for key in {**settings, **saved} if saved.get(key) != settings.get(key)]
        raise UserError(
            f"{own.out} holds a choose started with other settings ({', '.join(changed)}); rerunning continues "
            "it only with the same flags. Give those, or a new --out."
        )
    print(f"Continuing the choose in {own.out}")


def only_budget_changed(saved: dict, settings: dict) -> bool:
    return {k: v for k, v in saved.items() if k != "budget"} == {k: v for k, v in settings.items() if k != "budget"}


# ----------------------------------------------------------------------------------------------- 1. rank
def ranking(own: ChooseConfig, spec: DatasetSpec, run_flags: list[str]) -> pd.DataFrame:
    """The candidates ranked by LogME (rank.py's table), computed once and read back when continuing."""
    path = own.folder.ranking
    what = "choose's ranking (delete it to rank again)"  # read back as input: checked, the fingerprint kept as text
    if path.exists():
        return read_rankings([path], what).set_index("backbone")
    argv = ["--dataset", spec.name, "--models", *own.models, "--seed", str(own.seeds[0]), "--out", str(path)]
    config = rank.parse_args([*argv, *run_flags], known_only=True)
    rank.rank(dataclasses.replace(config, models=tuple(own.models), probe_images=own.probe_images, runs=()), path)
    return read_rankings([path], what).set_index("backbone")


def kept(own: ChooseConfig, table: pd.DataFrame) -> list[str]:
    """The backbones that race, best ranked first; says which the ranking drops (or would drop) and why."""
    order = table.sort_values(["rank", "logme"], ascending=[True, False]).index.tolist()
    keep = min(own.keep or len(order), len(order))
    cut = table.loc[order[keep - 1], "logme"]
    below = order[keep:] if own.keep else order[max(1, len(order) // 2) :]
    if below:
        verb = "Dropped" if own.keep else "Would drop with --keep " + str(len(order) - len(below))
        reasons = ", ".join(f"{name} (LogME {table.loc[name, 'logme']:.3f})" for name in below)
        print(f"{verb}: {reasons}; the last kept scores {cut:.3f}.")
    return order[:keep]


# --------------------------------------------------------------------- 2. race: the price of an epoch (time budget)
PRICE_STEPS = 3  # training steps timed per racing backbone, after one untimed, to price its epoch


def price_epochs(
    own: ChooseConfig, spec: DatasetSpec, run_flags: list[str], racing: list[str], ranked: pd.DataFrame
) -> dict:
    """With a time budget: the seconds an epoch of each racing backbone costs here, measured before the race spends
    any ({'prices': {backbone: seconds}, 'seconds': what measuring took}). A training step costs two to three
    forward passes depending on the architecture, so the ranking's speed alone cannot price it."""
    started, prices = time.perf_counter(), {}
    for name in racing:
        argv = [*run_flags, "-model", name, "--seed", str(own.seeds[0]), "--results", str(own.folder.results)]
        prices[name] = price_epoch(finetune.prepare(spec, argv), ranked.loc[name])
    return {"prices": prices, "seconds": time.perf_counter() - started}


def price_epoch(job: finetune.Prepared, ranked: pd.Series) -> float:
    """One epoch of the run `job`: `PRICE_STEPS` training steps timed on its own batches with the model a run
    builds, scaled to the training split; the BatchNorm re-estimation and the validation pass are forward passes at
    the ranking's speed (`ranked`: the backbone's row), or where it read cached features, a third of a step's."""
    trainee, _ = finetune.build_model(job)
    precision, batch_size = job.precision, job.config.batch_size
    trainable = [p for p in trainee.model.parameters() if p.requires_grad]
    step = bench.training_steps(trainee.train_forward, trainable, precision, "pricing", math.inf)
    batches = bench.endless(job.batches(lambda line: None, ("train",))("train", True))
    per_step = batch_size / bench.images_per_s(batches, batch_size, PRICE_STEPS, 1, precision.device, step)
    n_train, n_val = job.count("train"), job.count("val")
    forward = forward_seconds(ranked)
    if math.isnan(forward):
        forward = per_step / batch_size / 3
    reestimated = min(job.config.train.bn_images, n_train) if reestimated_norms(trainee.model) else 0
    price = math.ceil(n_train / batch_size) * per_step + forward * (n_val + reestimated)
    print(f"An epoch of {job.config.model} priced at {price:.1f} s ({per_step:.2f} s a training step).")
    return price


# ----------------------------------------------------------------------------------------------- 2. race
WAIT_SECONDS = 5.0  # how often a worker looks again for the work other workers hold


def share_work(folders: Sequence[Path], done: Callable[[int], bool], work: Callable[[int], None], what: str) -> None:
    """Do every task not done yet (task i trains in `folders[i]`), sharing them with the other workers of this choose:
    a worker takes a task by claiming its folder, leaves those another holds, and then waits until they are done.
    A task is done once, whichever worker does it; a dead worker's claim passes to the next that asks."""
    for parent in {folder.parent for folder in folders}:  # where the claims go, beside the tasks' folders
        parent.mkdir(parents=True, exist_ok=True)
    waiting = False
    while pending := [i for i in range(len(folders)) if not done(i)]:
        for i in pending:
            with claim(ChooseFolder.lock_of(folders[i])) as mine:
                if mine and not done(i):  # asked again under the claim: another worker may just have done it
                    work(i)
        held = [i for i in pending if not done(i)]  # by other workers
        if held:
            if not waiting:
                print(f"  waiting for other workers: {what}, {len(held)} left")
            waiting = True
            time.sleep(WAIT_SECONDS)


def check_minimum(own: ChooseConfig, pairs: int, per_epoch: float, backbones: int, spent: float = 0.0) -> None:
    """A budget that cannot pay for the first rung and one epoch per phase of each confirmation run is refused. The
    race has its share of the budget; the confirmation has what is left after the race and what a time budget has
    already spent (`spent`: the seconds the ranking and the pricing of an epoch took)."""
    race = pairs * own.min_epochs * per_epoch
    confirm = min(own.finalists, backbones) * len(own.seeds) * PHASES * per_epoch
    minimum = max(race / own.race_share, (confirm + spent) / (1 - own.race_share))
    if own.budget.amount < minimum:
        unit = own.budget.unit if own.budget.unit == "epochs" else "seconds (at the measured price of an epoch)"
        ranking = f", after the {spent:.0f} the ranking and the pricing took" if spent else ""
        raise UserError(
            f"--budget {own.budget} cannot pay for one rung: racing {pairs} pairs for {own.min_epochs} epoch(s) "
            f"each costs {race:.0f} {unit}, within --race-share {own.race_share:g} of the budget, and confirming "
            f"{min(own.finalists, backbones)} finalist(s) with {len(own.seeds)} seed(s) at least {confirm:.0f}"
            f"{ranking}. The minimum is {math.ceil(minimum)} {unit}. Raise --budget, or race fewer pairs (--keep, a "
            "shorter --lr-grid)."
        )


def print_plan(own: ChooseConfig, racing: int) -> None:
    """What an epoch budget buys if no pair stops early: the rungs, then each confirmation run's epoch cap."""
    if own.budget.unit != "epochs":
        print("With a time budget each rung is priced at the seconds per epoch measured as the race goes, so there "
              "is no plan before it runs; give the budget in epochs (--budget N) to see one.")  # fmt: skip
        return
    pairs = racing * len(own.lr_grid)
    rungs = plan(pairs, own.eta, own.min_epochs, own.race_share * own.budget.amount, own.finalists)
    print(f"Plan for --budget {own.budget}: {len(own.models)} candidates, {racing} racing x {len(own.lr_grid)} "
          f"learning rates = {pairs} pairs.")  # fmt: skip
    race_epochs, previous = 0, 0
    for rung in rungs:
        cost, previous = rung.pairs * (rung.epochs - previous), rung.epochs  # state carries over between rungs
        race_epochs += cost
        print(f"  rung {rung.index}: {rung.pairs} pairs to {rung.epochs} epoch(s) each ({cost} epochs)")
    finalists = min(own.finalists, racing)
    cap = confirm_epochs(own, [1.0] * finalists, own.budget.amount - race_epochs)
    share = own.race_share * own.budget.amount
    print(f"Race: {race_epochs} epochs of its {share:g}. Confirmation: {finalists} finalist(s) x {len(own.seeds)} "
          f"seed(s), at most {cap} epoch(s) per phase each. Nothing was run.")  # fmt: skip


def train_pair(spec: DatasetSpec, run_flags: list[str], pair: Pair, rung: Rung, seed: int, own: ChooseConfig) -> tuple:
    """Train the pair's AdamW phase on the training split to `rung.epochs` epochs in all, continuing from its last
    epoch; (best validation top-1, epochs, seconds in all). The test split is neither decoded nor read."""
    folder = own.folder.pairs / pair.name
    argv = [*run_flags, "-model", pair.model, "--lr", repr(pair.lr), "--seed", str(seed), "--out", str(folder)]
    job = finetune.prepare(spec, [*argv, "--results", str(own.folder.results)])  # the race writes no result
    trainee, _ = finetune.build_model(job)
    folder.mkdir(parents=True, exist_ok=True)
    files = RunFolder(folder)
    log = RunLog(files.log)
    batches = job.batches(log, ("train", "val"))
    config = dataclasses.replace(job.config.train, max_epochs=rung.epochs, sgd_phase=False)
    resumed = read_resume_file(files.resume) if files.resume.exists() else None
    output = RunOutput(folder, log, finetune.checkpoint_meta(job), lambda h: write_history(h, files.history))
    best, history = fit(trainee, FitData(batches("train", True), batches("val"), "val"), job.precision, config, output,
                        resumed)  # fmt: skip
    return best["top1"], len(history), sum(h["seconds"] for h in history)


def race(
    own: ChooseConfig, spec: DatasetSpec, run_flags: list[str], state: RaceState, prices: dict[str, float]
) -> list[Rung]:
    """Successive halving until the race's share of the budget is spent; returns the rungs run. `prices`: a time
    budget's measured seconds per epoch of each backbone, until its pairs have trained."""
    pairs, rungs, alive, rung = state.pairs, [], list(range(len(state.pairs))), None
    share = own.race_share * own.budget.amount

    def epoch_cost(index: int) -> float:  # in budget units: measured once the pair has trained
        if own.budget.unit == "epochs":
            return 1.0
        epochs, seconds = state.spent(index)
        return seconds / epochs if epochs else prices.get(pairs[index].model, 0.0)

    def affordable(cost: float) -> bool:  # the first rung always runs: the budget's minimum was checked
        spent = sum(state.spent(i)[0 if own.budget.unit == "epochs" else 1] for i in range(len(pairs)))
        return not rungs or spent + cost <= share

    while (rung := next_rung(rung, len(alive), own.eta, own.min_epochs, own.finalists)) is not None:
        cost = sum(epoch_cost(i) for i in alive) * (rung.epochs - (rungs[-1].epochs if rungs else 0))
        if not state.remember(f"run rung {rung.index}", lambda cost=cost: affordable(cost)):
            break
        print(f"\nRung {rung.index}: {len(alive)} pairs to {rung.epochs} epoch(s) each")
        run_rung(own, spec, run_flags, state, rung, alive)
        for i in alive:
            print(f"  {pairs[i].model} lr {pairs[i].lr:g}: validation top-1 {state.score(i, rung):.2f}%")
        rungs.append(rung)
        alive = [alive[j] for j in survivors([state.score(i, rung) for i in alive], own.eta, own.finalists)]
    return rungs


def run_rung(
    own: ChooseConfig, spec: DatasetSpec, run_flags: list[str], state: RaceState, rung: Rung, alive: list[int]
) -> None:
    """Train every pair in `alive` (indices into the race's pairs) to the rung's epochs, with the other workers."""
    pairs = [state.pairs[i] for i in alive]

    def train(j: int) -> None:
        print(f"  training {pairs[j].model} lr {pairs[j].lr:g} to {rung.epochs} epoch(s)")
        state.record(alive[j], rung, *train_pair(spec, run_flags, pairs[j], rung, own.seeds[0], own))

    folders = [own.folder.pairs / pair.name for pair in pairs]
    share_work(folders, lambda j: state.score(alive[j], rung) is not None, train, f"rung {rung.index}")


def standings(state: RaceState, rungs: list[Rung], logme: pd.Series, finalists: int) -> pd.DataFrame:
    """One row per pair, those that went furthest first, then by validation top-1: the last rung it trained in,
    its validation top-1 there and at each rung, its cost, and whether it is a finalist: the best pair of each of
    the best `finalists` backbones."""
    rows = []
    for i, pair in enumerate(state.pairs):
        scores = {rung_column(r.index, r.epochs): state.score(i, r) for r in rungs}
        reached = max((r.index for r in rungs if state.score(i, r) is not None), default=-1)
        epochs, seconds = state.spent(i)
        rows.append(
            {
                "backbone": pair.model, "lr": pair.lr, "logme": float(logme[pair.model]), "last_rung": reached,
                "val_top1": state.score(i, rungs[reached]) if reached >= 0 else math.nan, **scores,
                "epochs": epochs, "seconds": round(seconds, 2),
            }
        )  # fmt: skip
    table = pd.DataFrame(rows).sort_values(["last_rung", "val_top1"], ascending=False, kind="stable")
    table = table.reset_index(drop=True)
    table.insert(2, "finalist", table.index.isin(table.drop_duplicates("backbone").index[:finalists]))
    return table


def chosen_pairs(table: pd.DataFrame) -> list[Pair]:
    """The finalists: the best backbones, each at its best learning rate (those that went furthest, best first)."""
    return [Pair(row.backbone, float(row.lr)) for row in table[table["finalist"]].itertuples()]


def close_race(state: RaceState, table: pd.DataFrame, chosen: list[Pair]) -> None:
    """In the study: the finalists' pairs complete with their last score, every other pair pruned."""
    score = table.set_index(["backbone", "lr"])["val_top1"]
    for index, pair in enumerate(state.pairs):
        if pair in chosen:
            state.finish(index, float(score[(pair.model, pair.lr)]))
        else:
            state.leave(index)


def cost_per_epoch(unit: str, table: pd.DataFrame, model: str, estimate: float) -> float:
    """One epoch of `model` in `unit`: 1 epoch, or its seconds as the race measured them (else `estimate`)."""
    if unit == "epochs":
        return 1.0
    rows = table[(table["backbone"] == model) & (table["epochs"] > 0)]
    return float(rows["seconds"].sum() / rows["epochs"].sum()) if len(rows) else estimate


# ----------------------------------------------------------------------------------------------- 3. confirm
def confirm_epochs(own: ChooseConfig, costs: list[float], left: float) -> int:
    """Each confirmation run's cap on epochs per phase: what is left of the budget shared between the runs, whose
    epochs cost `costs` (one per finalist); the run flags' --max-epochs wins where it is lower."""
    per_epoch = len(own.seeds) * PHASES * sum(costs)
    if left < per_epoch:
        print(f"warning: the race left {max(left, 0):.0f} of the budget, less than one epoch per phase of each "
              "confirmation run; they run one epoch per phase, over budget.")  # fmt: skip
    cap = max(1, math.floor(left / per_epoch))
    return min(cap, own.run_max_epochs) if own.run_max_epochs else cap


def capped(own: ChooseConfig, cap: int) -> bool:
    """Whether the budget, not the run flags, capped the confirmation runs: then they are shorter than a sweep's runs
    and a sweep estimated from their length is a lower bound."""
    return own.run_max_epochs is None or cap < own.run_max_epochs


def confirm(own: ChooseConfig, spec: DatasetSpec, run_flags: list[str], chosen: list[Pair], cap: int) -> Path:
    """Each finalist with each seed under the normal protocol: the test set is read once per run, at its end."""
    root = own.folder.confirmation
    runs = [(pair, seed) for pair in chosen for seed in own.seeds]
    folders = [root / f"{pair.name}-s{seed}" for pair, seed in runs]

    def run(i: int) -> None:
        (pair, seed), folder = runs[i], folders[i]
        print(f"\nConfirming {pair.model} at lr {pair.lr:g}, seed {seed} (at most {cap} epochs per phase)")
        argv = [*run_flags, "-model", pair.model, "--lr", repr(pair.lr), "--seed", str(seed), "--out", str(folder),
                "--max-epochs", str(cap), "--results", str(own.folder.results)]  # fmt: skip
        finetune.main(spec, argv + (["--resume"] if folder.exists() else []))

    share_work(folders, lambda i: RunFolder(folders[i]).finished, run, "the confirmation runs")
    return root


# ----------------------------------------------------------------------------------------------- 4. answer
def answer(
    own: ChooseConfig,
    spec: DatasetSpec,
    table: pd.DataFrame,
    ranked: pd.DataFrame,
    root: Path,
    cap: int,
    priced: float = 0.0,
) -> dict:
    """The recommendation and its cost against the full sweep's; answer.json, choose.md, race.csv and race.png."""
    runs, _ = finished_runs([root])
    measured = runs_table(runs)[0]
    board = report.leaderboard(measured, seed=own.seeds[0])
    tied = board[board["tied_with_best"]]
    cheapest = tied.sort_values(["gflops_mean", "latency_ms_batch1_mean"]).iloc[0]
    learning_rate = {pair.model: pair.lr for pair in chosen_pairs(table)}
    result = {
        "best": board["backbone"].iloc[0],
        "tied": tied["backbone"].tolist(),
        "pick": cheapest["backbone"],
        "pick_lr": learning_rate[cheapest["backbone"]],
        "pick_run": pick_run(measured, cheapest["backbone"]),
        "confirm_epochs_per_phase_cap": cap,
        **cost(own, table, ranked, runs, priced),
    }
    write_csv(table, own.folder.race)
    plot_race(table, f"The race on {spec.title}", own.folder.race_plot)
    write_summary(own, spec, board, table, result)
    write_json(result, own.folder.answer)
    return result


def pick_run(measured: pd.DataFrame, pick: str) -> str:
    """The pick's confirmation run to use (predict.py, export.py): its seed with the best validation top-1, the
    score the runs selected on (`measured`: runs_table's rows; a run without the score last); the test set has been
    read, but never to choose."""
    of_pick = measured[measured["model"] == pick].sort_values("selection_top1", ascending=False, kind="stable")
    return str(of_pick["folder"].iloc[0])


def cost(own: ChooseConfig, table: pd.DataFrame, ranked: pd.DataFrame, runs: list[dict], priced: float = 0.0) -> dict:
    """What choose spent (epochs, seconds, training images; `priced`: the seconds a time budget's pricing took) and
    what the full sweep of every candidate with every seed would, at the confirmation runs' mean length and each
    backbone's measured seconds per epoch."""
    run_epochs = [len(run["history"]) for run in runs]
    measured = {run["model"]: run["train_seconds"] / max(len(run["history"]), 1) for run in runs}
    per_epoch = {
        name: measured.get(name) or cost_per_epoch("seconds", table, name, estimate_epoch_seconds(row))
        for name, row in ranked.iterrows()
    }
    mean_epochs = sum(run_epochs) / len(run_epochs)
    spent = {
        "rank_seconds": round(rank_seconds(ranked), 1),
        "price_seconds": round(priced, 1),
        "race_epochs": int(table["epochs"].sum()),
        "race_seconds": round(float(table["seconds"].sum()), 1),
        "confirm_epochs": int(sum(run_epochs)),
        "confirm_seconds": round(float(sum(run["train_seconds"] for run in runs)), 1),
    }
    spent["epochs"] = spent["race_epochs"] + spent["confirm_epochs"]
    parts = ("rank_seconds", "price_seconds", "race_seconds", "confirm_seconds")
    spent["seconds"] = round(sum(spent[part] for part in parts), 1)
    spent["training_images"] = spent["epochs"] * int(runs[0]["n_train"])
    spent["sweep_epochs_estimated"] = round(len(ranked) * len(own.seeds) * mean_epochs, 1)
    seconds = len(own.seeds) * mean_epochs * sum(per_epoch.values())  # NaN: a backbone's speed is unknown
    spent["sweep_seconds_estimated"] = None if math.isnan(seconds) else round(seconds, 1)
    return spent


def rank_seconds(ranked: pd.DataFrame) -> float:
    """What the ranking took: extracting every candidate's features and scoring them."""
    return float((ranked["features_seconds"] + ranked["score_seconds"]).sum())


def seconds_text(seconds: float | None) -> str:
    """A time in whole seconds, or 'unknown' where a backbone that did not race had its features from the cache."""
    return "unknown" if seconds is None else f"{seconds:.0f}"


def forward_seconds(row: pd.Series) -> float:
    """One image's forward pass, from the ranking's extraction time (`row`: the backbone's row of the ranking); NaN
    where the ranking read its features from the cache."""
    if str(row.get("features_cached")) == "True":
        return math.nan
    probed = float(row.get("probe_images", math.nan))  # the training images extracted: a sample, or all
    extracted = (float(row["n_train"]) if math.isnan(probed) else probed) + float(row["n_val"])
    return float(row["features_seconds"]) / extracted


def estimate_epoch_seconds(row: pd.Series) -> float:
    """A training epoch as about three forward passes over the training images plus one over the validation
    images (NaN where the ranking timed none)."""
    return forward_seconds(row) * (3 * float(row["n_train"]) + float(row["n_val"]))


def write_summary(own: ChooseConfig, spec: DatasetSpec, board: pd.DataFrame, table: pd.DataFrame, result: dict) -> None:
    """choose.md: the answer first, then the cost, the race and the confirmation's leaderboard."""
    sweep_cost = {unit: result[f"sweep_{unit}_estimated"] for unit in ("epochs", "seconds")}
    ratio = {unit: f"{result[unit] / cost:.2f}" if cost else "unknown" for unit, cost in sweep_cost.items()}
    sweep = f"{result['sweep_epochs_estimated']:.0f} | {seconds_text(result['sweep_seconds_estimated'])}"
    sampled = f" from {own.probe_images} training images each" if own.probe_images else ""
    ranking_row = f"ranking ({len(own.models)} candidates{sampled}, {table['backbone'].nunique()} raced)"
    text = f"""# Choosing a backbone for {md(spec.title)}

{report.recommendation(board)}

**Pick: {md(result["pick"])}** at learning rate {result["pick_lr"]:g}: the cheapest (GFLOPs) of those tied with the
best. Finalists: {md(", ".join(pair.model for pair in chosen_pairs(table)))}. Its run with the best validation
top-1, for `predict.py --run` and `export.py --run`: {md(result["pick_run"])}.

## Cost

| | epochs | seconds |
|---|---|---|
| {ranking_row} | 0 | {result["rank_seconds"]:.0f} |
| pricing an epoch of each raced backbone (a time budget only) | 0 | {result["price_seconds"]:.0f} |
| race | {result["race_epochs"]} | {result["race_seconds"]:.0f} |
| confirmation | {result["confirm_epochs"]} | {result["confirm_seconds"]:.0f} |
| **choose in all** | **{result["epochs"]}** | **{result["seconds"]:.0f}** |
| the full sweep ({len(own.models)} backbones x {len(own.seeds)} seeds), estimated | {sweep} |
| ratio | {ratio["epochs"]} | {ratio["seconds"]} |

Budget {own.budget}. The full sweep is estimated at the confirmation runs' mean length, with each backbone's
seconds per epoch as measured here (or, for a backbone that did not race, from the ranking's extraction speed).
The budget capped the confirmation runs at {result["confirm_epochs_per_phase_cap"]} epoch(s) per phase; a sweep's
runs last as long as the run flags let them, so where that cap stopped them the estimate is a lower bound.

## The race

Successive halving (eta {own.eta}) over {len(table)} (backbone, learning rate) pairs on the validation split:
AdamW alone, each rung continuing from the last; a pair's score is its best validation top-1 so far.

{race_markdown(table)}

![The race]({own.folder.race_plot.name})

## Confirmation: {len(own.seeds)} seeds each, the test set read once per run

{report.leaderboard_markdown(board)}
"""
    own.folder.summary.write_text(text)


def main(argv: list[str] | None = None) -> dict:
    own, spec, run_flags = parse_args(sys.argv[1:] if argv is None else argv)
    racing_count = min(own.keep or len(own.models), len(own.models))
    if own.budget.unit == "epochs":  # checked before any work; a time budget needs the ranking's speed first
        check_minimum(own, racing_count * len(own.lr_grid), 1.0, racing_count)
    if own.dry_run:
        print_plan(own, racing_count)
        return {}
    shared = open_folder(own, run_flags)
    with shared:  # the first worker ranks; the others wait and read its table
        ranked = ranking(own, spec, run_flags)
    racing = kept(own, ranked)
    state = RaceState(own.storage, "race", [Pair(m, lr) for m in racing for lr in own.lr_grid],
                      str(ranked["dataset_fingerprint"].iloc[0]), shared)  # fmt: skip
    prices, priced = {}, 0.0  # an epoch budget counts epochs: there is nothing to price
    if own.budget.unit == "seconds":  # measured once: a continued choose prices as the first one did
        measured = state.remember("epoch prices", lambda: price_epochs(own, spec, run_flags, racing, ranked))
        prices, priced = measured["prices"], measured["seconds"]
        per_epoch = sum(prices.values()) / len(racing)
        check_minimum(own, racing_count * len(own.lr_grid), per_epoch, racing_count, rank_seconds(ranked) + priced)
    rungs = race(own, spec, run_flags, state, prices)
    table = standings(state, rungs, ranked["logme"], own.finalists)
    chosen = chosen_pairs(table)
    with shared:
        close_race(state, table, chosen)
    print("\nFinalists: " + ", ".join(f"{pair.model} (lr {pair.lr:g})" for pair in chosen))
    spent = table["epochs"].sum() if own.budget.unit == "epochs" else (
        rank_seconds(ranked) + priced + table["seconds"].sum()
    )  # fmt: skip
    costs = [cost_per_epoch(own.budget.unit, table, pair.model, prices.get(pair.model, 1.0)) for pair in chosen]
    cap = state.remember("confirm epochs", lambda: confirm_epochs(own, costs, own.budget.amount - spent))
    root = confirm(own, spec, run_flags, chosen, cap)
    with shared:  # each worker answers alike; one at a time
        result = answer(own, spec, table, ranked, root, cap, priced)
    bound = "at least" if capped(own, cap) else "about"
    print(
        f"\nPick: {result['pick']} (lr {result['pick_lr']:g}). Best: {result['best']}; tied with it: "
        f"{', '.join(result['tied'])}. choose spent {result['epochs']} epochs and {result['seconds']:.0f} s; the "
        f"full sweep would take {bound} {result['sweep_epochs_estimated']:.0f} epochs and "
        f"{seconds_text(result['sweep_seconds_estimated'])} s. Details in {own.folder.summary}.\n"
        f"Use it: python predict.py --run {result['pick_run']} IMAGES, or python export.py --run "
        f"{result['pick_run']} --format onnx --out model/"
    )
    return result


if __name__ == "__main__":
    run_cli(main)
