"""sweep.py on digits: a grid that is killed mid-way and resumed loses and repeats nothing, and ends in a report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from backbones.errors import UserError
from conftest import ROOT, assert_clean_error, run_inline, run_script

# two tiny timm models x two data sizes x two seeds: the sweep is killed in the fourth run
RUN_FLAGS = ["-bs", "64", "--weights", "none", "--max-epochs", "1", "--patience", "1", "--workers", "0"]
GRID = ["--models", "timm:test_efficientnet", "timm:test_resnet", "--datasets", "digits",
        "--fractions", "0.5", "1", "--seeds", "0", "1"]  # fmt: skip


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_repeating_or_losing_runs(tmp_path):
    out = tmp_path / "sweep"
    command = [sys.executable, str(ROOT / "sweep.py"), *GRID, "--out", str(out), "--", *RUN_FLAGS]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)  # fmt: skip
    finished = 0
    for line in process.stdout:
        finished += line.startswith("done ")
        if finished == 3:
            break
    started_fourth = next(line for line in process.stdout if line.startswith("start"))
    interrupted = started_fourth.split()[1]
    deadline = time.monotonic() + 120
    while not (Path(interrupted) / "log.txt").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)  # the sweep and the run it had started
    process.wait(timeout=60)
    done_before = {p.parent: p.stat().st_mtime_ns for p in out.rglob("metrics.json")}
    assert len(done_before) == 3

    plan = run_script("sweep.py", *GRID, "--out", out, "--dry-run", "--", *RUN_FLAGS)
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.startswith("8 runs: 3 finished (skipped), 1 to resume, 4 new")
    assert any(line.startswith("resume") and line.endswith(f"--out {interrupted} --resume")
               for line in plan.stdout.splitlines())  # fmt: skip

    result = run_script("sweep.py", *GRID, "--out", out, "--", *RUN_FLAGS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "5 runs finished now, 3 before, 0 failed" in result.stdout
    runs = sorted(out.rglob("metrics.json"))
    assert len(runs) == 8
    assert {p.parent: p.stat().st_mtime_ns for p in runs if p.parent in done_before} == done_before  # not repeated
    configurations = {(m["model"], m["train_fraction"], m["seed"]) for m in (json.loads(p.read_text()) for p in runs)}
    assert len(configurations) == 8

    board = pd.read_csv(out / "report" / "leaderboard.csv")
    assert sorted(board.groupby(board["train_fraction"].fillna(1.0))["backbone"].count().items()) == [
        (0.5, 2),
        (1.0, 2),
    ]
    assert (board["seeds"] == "0,1").all()
    assert len(list((out / "report").glob("learning-curve-*.png"))) == 1


@pytest.mark.slow
def test_a_failed_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    out = tmp_path / "sweep"
    result = run_script("sweep.py", "--models", "wavemix", "timm:test_resnet", "--datasets", "digits", "--out", out,
                        "--", *RUN_FLAGS, "--image-size", "40")  # fmt: skip
    assert result.returncode == 1, result.stderr  # a sweep with a failed run does not report success
    error = out / "digits" / "wavemix" / "full" / "s0.error"
    assert "multiples of 32" in " ".join(error.read_text().split())
    assert (
        "1 runs finished now, 0 before, 1 failed" in result.stdout
        and f"failed: {error.with_suffix('')}" in result.stdout
    )
    assert (out / "digits" / "timm_test_resnet" / "full" / "s0" / "metrics.json").exists()


@pytest.mark.slow
def test_submitit_local_executor_runs_the_grid(tmp_path):
    out = tmp_path / "sweep"
    result = run_script("sweep.py", "--models", "mobilenet", "--datasets", "digits", "--shots", "4", "--out", out,
                        "--launcher", "submitit-local", "--", *RUN_FLAGS)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((out / "digits" / "mobilenet_v3_large" / "shots4" / "s0" / "metrics.json").read_text())
    assert metrics["shots"] == 4 and metrics["n_train"] + metrics["n_val"] == 40
    assert "submitted 1 jobs (submitit-local)" in result.stdout and any((out / "submitit").iterdir())


def test_sweep_flags_that_would_clash_are_refused(tmp_path):
    common = ["--models", "mobilenet", "--datasets", "digits", "--out", tmp_path / "s"]
    for given in (["--seed", "3"], ["--seed=3"], ["--see", "3"], ["-model=resnet50"], ["--train-frac", "0.5"]):
        assert_clean_error(run_inline("sweep.py", *common, "--dry-run", "--", *given), "which the sweep sets")
    assert_clean_error(run_inline("sweep.py", *common, "--dry-run", "--", "--lr", "nan"),
                       "digits.py would reject the flags", "--lr: must be a finite number")  # fmt: skip
    assert_clean_error(run_inline("sweep.py", *common, "--dry-run", "--", "--no-such-flag"), "unrecognized arguments")
    assert_clean_error(run_inline("sweep.py", *common, "--fractions", "1.5"), "--fractions must be in (0, 1]")
    assert_clean_error(run_inline("sweep.py", *common[:2], "nonet", *common[2:]), "Unknown model 'nonet'")
    result = run_inline("sweep.py", *common, "--launcher", "slurm")
    assert_clean_error(result, "--launcher slurm needs a Slurm cluster", "--launcher local")
    assert not (tmp_path / "s").exists()


def test_a_learning_rate_grid_gives_each_rate_its_folders_and_owns_the_lr_flag(tmp_path):
    common = ["--models", "mobilenet", "--datasets", "digits", "--seeds", "0", "1", "--out", tmp_path / "s"]
    result = run_inline("sweep.py", *common, "--lr-grid", "3e-4", "1e-3", "--dry-run", "--", "-bs", "64")
    assert result.returncode == 0, result.stderr
    commands = [line.split() for line in result.stdout.splitlines() if line.startswith("new")]
    planned = {(c[c.index("--out") + 1], c[c.index("--lr") + 1], c[c.index("--seed") + 1]) for c in commands}
    folder = str(tmp_path / "s" / "digits" / "mobilenet_v3_large" / "full")
    assert planned == {(f"{folder}/lr{lr:g}/s{seed}", repr(lr), str(seed)) for lr in (3e-4, 1e-3) for seed in (0, 1)}
    clash = run_inline("sweep.py", *common, "--lr-grid", "1e-3", "--dry-run", "--", "--lr", "0.1")
    assert_clean_error(clash, "--lr-grid instead", "which the sweep sets for each run itself")


@pytest.mark.slow
def test_a_run_folder_of_another_configuration_is_never_reused(tmp_path):
    from backbones.datasets import digits
    from backbones.runconfig import resolve

    out = tmp_path / "sweep"
    folder = out / "digits" / "mobilenet_v3_large" / "full" / "s0"
    folder.mkdir(parents=True)
    started = ["-model", "mobilenet_v3_large", "--seed", "0", *RUN_FLAGS, "--out", str(folder)]
    config = resolve(digits.SPEC, started).flags
    (folder / "config.json").write_text(json.dumps({"config": config}))  # as a run writes it when it starts
    common = ["--models", "mobilenet", "--datasets", "digits", "--out", out, "--dry-run", "--"]
    same = run_script("sweep.py", *common, *RUN_FLAGS)
    assert same.returncode == 0 and "1 to resume" in same.stdout
    other = run_script("sweep.py", *common, *RUN_FLAGS, "--lr", "0.01")
    assert_clean_error(other, "another configuration", f"{folder} (lr 0.001 there, 0.01 now)", "new --out")


def test_slurm_options_reach_submitit_as_its_own_parameters(tmp_path):
    import submitit

    from backbones import sweep

    own = ["--models", "mobilenet", "--datasets", "digits", "--launcher", "slurm", "--slurm-account", "lab",
           "--slurm-qos", "high", "--slurm-mem", "32G", "--cpus-per-task", "4", "--slurm-extra", "constraint=a100",
           "--device", "cuda:1", "--", "-bs", "16"]  # fmt: skip
    config = sweep.parse_args(own)
    parameters = config.slurm
    assert parameters == {
        "timeout_min": 1440, "gpus_per_node": 1, "cpus_per_task": 4, "slurm_account": "lab", "slurm_qos": "high",
        "slurm_mem": "32G", "slurm_additional_parameters": {"constraint": "a100"},
    }  # fmt: skip
    submitit.AutoExecutor(folder=tmp_path, cluster="debug").update_parameters(**parameters)  # names it knows
    assert config.passthrough == ("-bs", "16", "--device", "cuda:1")
    with pytest.raises(UserError, match="KEY=VALUE"):
        sweep.parse_args([*own[:4], "--slurm-extra", "a100"])
