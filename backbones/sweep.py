"""Run a grid of fine-tuning runs that survives being killed: backbones x datasets x data sizes x seeds.

Usage: python sweep.py --models all --datasets eurosat dtd --fractions 0.1 1 --seeds 0 1 2 -- -bs 32

Each run has its own folder named from its configuration (<out>/<dataset>/<backbone>/<size>/s<seed>). Finished runs
(they have metrics.json) are skipped, killed ones are resumed from their last epoch, a failed run is recorded and
the sweep goes on. Flags after `--` go to every run. At the end the report is written to <out>/report.
"""

from __future__ import annotations

import argparse
import itertools
import os
import queue
import shlex
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from backbones import datasets, models, options, report, runconfig
from backbones.errors import HelpFormatter, UserError, run_cli
from backbones.flags import add_device, add_models, add_out, frozen
from backbones.record import config_differences
from backbones.runcheck import read_json
from backbones.runfolder import RunFolder

PLACEHOLDER_MODEL = "(set by the sweep)"  # -model is required by the script's parser; the sweep gives it per run
PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the folder holding the backbones package
OWN_SETTINGS = {"model", "seed", "train_fraction", "shots", "out", "resume", "device"}  # set per run by the sweep


@dataclass(frozen=True)
class Job:
    dataset: str
    model: str
    size: str  # 'full', 'fraction<F>' or 'shots<K>': the folder's name
    seed: int
    folder: Path
    lr: float | None = None  # one of --lr-grid; None: the runs' own --lr

    def command(self, passthrough: Sequence[str]) -> list[str]:
        """`python -m backbones train <dataset> <the run's flags>`: the dataset's flags start at index 5."""
        size = []
        for flag, prefix in (("--train-fraction", "fraction"), ("--shots", "shots")):
            if self.size.startswith(prefix):
                size = [flag, self.size.removeprefix(prefix)]
        command = [sys.executable, "-m", "backbones", "train", self.dataset, "-model", self.model]
        command += ["--seed", str(self.seed), *size, *passthrough, "--out", str(self.folder)]
        command += ["--lr", repr(self.lr)] if self.lr is not None else []
        return command + (["--resume"] if self.status == "resume" else [])

    @property
    def status(self) -> str:
        if RunFolder(self.folder).finished:
            return "done"
        return "resume" if self.folder.exists() else "new"


@dataclass(frozen=True)
class SweepConfig:
    models: tuple[str, ...]
    datasets: tuple[str, ...]
    fractions: tuple[float, ...]
    shots: tuple[int, ...]
    seeds: tuple[int, ...]
    lr_grid: tuple[float, ...]
    out: Path
    gpus: tuple[str, ...] | None  # one run per listed GPU at a time; None: one run at a time, as the runs choose
    launcher: str
    timeout_min: int
    slurm: dict  # submitit's parameters for --launcher slurm
    dry_run: bool
    passthrough: tuple[str, ...]  # every run's own flags (after --), --device included


def parse_args(argv: list[str] | None) -> SweepConfig:
    argv = sys.argv[1:] if argv is None else argv
    own, passthrough = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(
        description="Run every combination of backbones, datasets, data sizes and seeds; finished runs are "
        "skipped and killed ones resumed, so rerunning the same command continues a sweep. Flags after -- are "
        "passed to every run (e.g. -- -bs 32 --weights imagenet).",
        formatter_class=HelpFormatter,
    )
    add = parser.add_argument
    add_models(parser, None)
    add("--datasets", nargs="+", required=True, choices=datasets.NAMES, metavar="DATASET", help="dataset script names")
    add("--fractions", nargs="+", type=float, default=[], help="--train-fraction values (with --shots: both)")
    add("--shots", nargs="+", type=int, default=[], help="--shots values (images per class)")
    add("--seeds", nargs="+", type=int, default=[0], help="seeds; each seeds the split, init and data order")
    add(
        "--lr-grid",
        nargs="+",
        type=options.positive_float,
        default=[],
        help="AdamW learning rates: every run with each, in <size>/lr<LR>/s<seed>; the report then compares each "
        "backbone at the rate with its best validation top-1 (default: the runs' one --lr)",
    )
    add_out(parser, Path("runs/sweep"), "the sweep's folder: one subfolder per run")
    add("--gpus", default=None, help="comma-separated GPU ids: one run per GPU at a time (default: one at a time)")
    add_device(parser, "every run's --device (default: the runs' own, auto)", default=None)
    add(
        "--launcher",
        choices=("local", "slurm", "submitit-local"),
        default="local",
        help="'local': runs here; 'slurm': a submitit job array on a Slurm cluster; 'submitit-local': submitit's "
        "local executor (the same code path, on this machine)",
    )
    add("--timeout-min", type=int, default=24 * 60, help="time limit of each submitit job, in minutes")
    slurm = parser.add_argument_group("--launcher slurm (submitit's own parameters)").add_argument
    slurm("--slurm-partition", default=None, help="partition (default: the cluster's)")
    slurm("--slurm-account", default=None, help="account to charge (default: yours)")
    slurm("--slurm-qos", default=None, help="quality of service (default: the cluster's)")
    slurm("--slurm-mem", default=None, help="memory per run, e.g. 32G (default: the cluster's)")
    slurm("--cpus-per-task", type=int, default=8, help="CPU cores per run (data-loading workers)")
    slurm("--gpus-per-task", type=int, default=1, help="GPUs per run")
    slurm(
        "--slurm-extra",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="further sbatch options, e.g. constraint=a100 (submitit's slurm_additional_parameters)",
    )
    add("--dry-run", action="store_true", help="print the plan (and what is done already) without running")
    parsed = parser.parse_args(own)
    for dataset in parsed.datasets:
        clash = sorted(given_settings(dataset, passthrough) & (OWN_SETTINGS | ({"lr"} if parsed.lr_grid else set())))
        if clash:
            raise UserError(
                f"The flags after -- set {', '.join(clash)}, which the sweep sets for each run itself (backbone, seed, "
                "data size, folder, device, learning rate with --lr-grid): two run folders would then hold the same "
                "run. Use --models, --seeds, --fractions/--shots, --out, --gpus and --lr-grid instead."
            )
    bad = [f for f in parsed.fractions if not 0 < f <= 1] + [k for k in parsed.shots if k < 1]
    if bad:
        raise UserError(f"--fractions must be in (0, 1] and --shots at least 1; got {bad}.")
    malformed = [item for item in parsed.slurm_extra if "=" not in item]
    if malformed:
        raise UserError(f"--slurm-extra takes KEY=VALUE items, e.g. constraint=a100; got {', '.join(malformed)}.")
    slurm = slurm_parameters(parsed)
    texts = [value for value in slurm.values() if isinstance(value, str)] + parsed.slurm_extra  # the sbatch lines
    unsafe = [value for value in texts if not value.isprintable()]
    if unsafe:
        raise UserError(
            f"A Slurm value holds a line break or another control character ({', '.join(map(repr, unsafe))}): in the "
            "sbatch script submitit writes, it would start a line of its own, run as a shell command. Pass each "
            "value on one line (e.g. --slurm-extra constraint=a100)."
        )
    if parsed.gpus and parsed.device not in (None, "cuda"):
        raise UserError(f"--gpus runs each run on one of the listed GPUs, so --device {parsed.device} cannot apply.")
    if parsed.device and not parsed.gpus:
        passthrough = [*passthrough, "--device", parsed.device]
    gpus = parsed.gpus.split(",") if parsed.gpus else None
    return frozen(SweepConfig, parsed, gpus=gpus, slurm=slurm, passthrough=passthrough)


def slurm_parameters(parsed: argparse.Namespace) -> dict:
    """What submitit's AutoExecutor is given for --launcher slurm (None values: the cluster's defaults)."""
    extra = dict(item.split("=", 1) for item in parsed.slurm_extra)
    parameters = {
        "timeout_min": parsed.timeout_min,
        "gpus_per_node": parsed.gpus_per_task,
        "cpus_per_task": parsed.cpus_per_task,
        "slurm_partition": parsed.slurm_partition,
        "slurm_account": parsed.slurm_account,
        "slurm_qos": parsed.slurm_qos,
        "slurm_mem": parsed.slurm_mem,
        "slurm_additional_parameters": extra,
    }
    return {key: value for key, value in parameters.items() if value not in (None, {})}


def script_parser(dataset: str) -> argparse.ArgumentParser:
    """The dataset script's own parser, whose errors become a `UserError` naming the script."""
    parser = options.build_parser(datasets.spec(dataset))

    def error(message: str) -> None:
        raise UserError(f"{dataset}.py would reject the flags given to the sweep: {message}. Nothing was run.")

    parser.error = error
    return parser


def given_settings(dataset: str, passthrough: Sequence[str]) -> set[str]:
    """The settings the flags after -- give, parsed exactly as the run's script will parse them (so `--seed=7`, an
    abbreviation such as `--see 7`, and a value the script would refuse are all caught here). argparse leaves an
    attribute the namespace already holds untouched unless a flag sets it, so every setting starts as a marker."""
    parser = script_parser(dataset)
    unset = object()
    every = vars(parser.parse_args(["-model", PLACEHOLDER_MODEL]))
    given = vars(
        parser.parse_args(
            ["-model", PLACEHOLDER_MODEL, *passthrough], argparse.Namespace(**dict.fromkeys(every, unset))
        )
    )
    return {key for key, value in given.items() if value is not unset and value != PLACEHOLDER_MODEL}


def saved_config(folder: Path) -> dict | None:
    """The configuration an existing run folder was started with (config.json, or a finished run's metrics)."""
    for path in (RunFolder(folder).config, RunFolder(folder).metrics):
        saved, problem = read_json(path)  # a missing file is a problem too
        if not problem and isinstance(saved, dict) and isinstance(saved.get("config"), dict):
            return saved["config"]
    return None


def conflicts(jobs: list[Job], passthrough: Sequence[str]) -> list[str]:
    """Existing run folders whose saved configuration is not the one this sweep would run there (another --lr or
    --weights after --, say): reusing them would pass old results off as new ones."""
    found = []
    for job in jobs:
        saved = saved_config(job.folder)
        if saved is None:
            continue
        command = script_parser(job.dataset).parse_args(job.command(passthrough)[5:])
        wanted = runconfig.json_ready(runconfig.with_protocol_defaults(datasets.spec(job.dataset), command))
        differing = config_differences(saved, wanted)
        if differing:
            found.append(f"{job.folder} ({differing[0]})")
    return found


def plan(config: SweepConfig) -> list[Job]:
    names = models.resolve_names(list(config.models))
    sizes = [f"fraction{f:g}" if f < 1 else "full" for f in config.fractions] + [f"shots{k}" for k in config.shots]
    sizes = sizes or ["full"]
    rates = dict.fromkeys(config.lr_grid) or [None]
    jobs = []
    grid = itertools.product(config.datasets, names, dict.fromkeys(sizes), rates, config.seeds)
    for dataset, model, size, lr, seed in grid:
        rate = "" if lr is None else f"lr{lr:g}"
        folder = config.out / dataset / model.replace(":", "_") / size / rate / f"s{seed}"
        jobs.append(Job(dataset, model, size, seed, folder, lr))
    return jobs


def run_job(command: list[str], folder: str, gpu: str | None = None) -> int:
    """Run one job to the end; its output goes to <folder>.log beside the folder, and a failure is recorded in
    <folder>.error rather than stopping the sweep."""
    environment = dict(os.environ)  # the runs import this very package, installed or not
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), environment.get("PYTHONPATH")]))
    if gpu is not None:
        environment["CUDA_VISIBLE_DEVICES"] = gpu
        command = [*command, "--device", "cuda"]
    folder_path = Path(folder)
    folder_path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{folder}.log", "a") as output:
        code = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, env=environment).returncode
    error_file = Path(f"{folder}.error")
    if code != 0:
        tail = Path(f"{folder}.log").read_text().strip().splitlines()[-15:]
        error_file.write_text(f"exit code {code}\n" + "\n".join(tail) + "\n")
    else:
        error_file.unlink(missing_ok=True)
    return code


def run_local(jobs: list[Job], passthrough: Sequence[str], gpus: Sequence[str] | None) -> dict[Job, int]:
    devices: queue.Queue = queue.Queue()
    for gpu in gpus or [None]:
        devices.put(gpu)

    def one(job: Job) -> int:
        gpu = devices.get()
        try:
            print(f"start  {job.folder}" + (f" on GPU {gpu}" if gpu is not None else ""), flush=True)
            code = run_job(job.command(passthrough), str(job.folder), gpu)
            outcome = "done  " if code == 0 else "FAILED"
            print(f"{outcome} {job.folder}" + (f" (see {job.folder}.error)" if code else ""), flush=True)
            return code
        finally:
            devices.put(gpu)

    with ThreadPoolExecutor(max_workers=len(gpus or [None])) as pool:
        return dict(zip(jobs, pool.map(one, jobs), strict=True))


def run_submitit(jobs: list[Job], config: SweepConfig) -> dict[Job, int]:
    """One job array through submitit: on Slurm, or with its local executor."""
    import submitit

    logs = config.out / "submitit"
    if config.launcher == "slurm":
        try:
            executor = submitit.AutoExecutor(folder=logs, cluster="slurm")
        except RuntimeError as err:  # submitit finds no srun/sbatch here
            raise UserError(
                f"--launcher slurm needs a Slurm cluster, but submitit says: {err} Run the sweep from a login node "
                "of the cluster, or use --launcher local (this machine) instead. Nothing was run."
            ) from err
        executor.update_parameters(**config.slurm)
    else:
        executor = submitit.LocalExecutor(folder=logs)
        executor.update_parameters(timeout_min=config.timeout_min)
    submitted = executor.map_array(
        run_job, [job.command(config.passthrough) for job in jobs], [str(job.folder) for job in jobs]
    )
    print(f"submitted {len(submitted)} jobs ({config.launcher}); logs in {logs}", flush=True)
    return {job: handle.result() for job, handle in zip(jobs, submitted, strict=True)}


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    passthrough = config.passthrough
    jobs = plan(config)
    clashing = conflicts(jobs, passthrough)
    if clashing:
        raise UserError(
            f"{len(clashing)} run folder(s) under --out {config.out} hold runs of another configuration than this "
            f"sweep asks for, e.g. {'; '.join(clashing[:3])}. Their results would be taken for this sweep's. Use a new "
            "--out for the new configuration, or the flags those runs were made with."
        )
    counts = {status: sum(job.status == status for job in jobs) for status in ("done", "resume", "new")}
    print(
        f"{len(jobs)} runs: {counts['done']} finished (skipped), {counts['resume']} to resume, {counts['new']} new"
        + (f"; every run gets: {' '.join(passthrough)}" if passthrough else ""),
        flush=True,
    )
    if config.dry_run:
        for job in jobs:
            print(f"{job.status:6s} {shlex.join(job.command(passthrough))}")  # pasted into a shell: exactly this
        return
    todo = [job for job in jobs if job.status != "done"]
    local = config.launcher == "local"
    codes = run_local(todo, passthrough, config.gpus) if local else run_submitit(todo, config)
    failed = [job for job, code in codes.items() if code != 0]
    print(f"\n{len(todo) - len(failed)} runs finished now, {counts['done']} before, {len(failed)} failed")
    for job in failed:
        print(f"  failed: {job.folder} (see {job.folder}.error)")
    if len(failed) < len(jobs):
        report.main(["--runs", str(config.out), "--out", str(config.out / "report")])
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
