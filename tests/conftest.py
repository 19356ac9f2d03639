"""Shared helpers: small datasets written in each dataset's published on-disk format, and a script runner."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

from formats import make_class_folders

ROOT = Path(__file__).resolve().parents[1]
FAST = [
    "-model",
    "mobilenet_v3_large",
    "-bs",
    "8",
    "--weights",
    "none",
    "--image-size",
    "32",
    "--max-epochs",
    "1",
    "--patience",
    "1",
    "--workers",
    "0",
]


def pytest_configure(config: pytest.Config) -> None:
    """The fast tier (-m "not slow") runs PyTorch on one intra-op thread, in its scripts too: its operations are too
    small to gain from a second, and handing work between threads cost more than it saved (measured on 2 cores: 87 s
    of wall time and 85 s of CPU with one thread, 102 s and 114 s with two). So do pytest-xdist's workers (`-n`),
    which already keep every core busy with tests; the slow tier run alone keeps every core for its training runs."""
    fast_tier = config.option.markexpr.replace("'", '"') == "not slow"
    parallel = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1
    if (fast_tier or parallel) and "torch" not in sys.modules:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # read once, when PyTorch loads


# fixtures that train, shared by several tests (session-wide, or test_train.py's `uninterrupted`), slowest first
TRAINED_FIXTURES = ("digits_sweep", "digits_run", "uninterrupted", "folder_runs")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`--dist loadgroup`), the tests that read a trained fixture run on one worker, so that
    each fixture trains once rather than once per worker."""
    for item in items:
        used = [name for name in TRAINED_FIXTURES if name in item.fixturenames]
        if used:
            item.add_marker(pytest.mark.xdist_group(used[0]))


def quick_start_commands() -> list[str]:
    """The two commands of the README's quick start."""
    section = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def run_inline(
    script: str, *args: str, cwd: Path | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    """A project script run inside the test process, with the exit code and output `run_script` would give: for
    commands that stop early (errors, --help), without paying a Python and PyTorch start-up each time."""
    from backbones import datasets, finetune
    from backbones.errors import run_cli

    argv, name = [str(arg) for arg in args], script.removesuffix(".py")
    if name in datasets.NAMES:
        target = lambda: finetune.run(datasets.spec(name), argv)  # noqa: E731
    else:
        tool = importlib.import_module(f"backbones.{name}")
        target = lambda: run_cli(lambda: tool.main(argv))  # noqa: E731
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    try:
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        os.chdir(cwd or ROOT)
        return call_captured(target, [script, *argv])
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)


def call_captured(target, command: list[str]) -> subprocess.CompletedProcess:
    """`target()` inside the test process, with the exit code and output running `command` would give."""
    out, err, code = io.StringIO(), io.StringIO(), 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            target()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return subprocess.CompletedProcess(command, code, out.getvalue(), err.getvalue())


def run_script(
    script: str, *args: str, cwd: Path | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run a project script as a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, str(ROOT / script), *map(str, args)],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


def assert_clean_error(result: subprocess.CompletedProcess, *phrases: str) -> None:
    """A user error: non-zero exit, a message naming the problem, and no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    message = " ".join(result.stderr.split())  # the message is wrapped for the terminal
    for phrase in phrases:
        assert phrase in message, result.stderr


def finished_run(result: subprocess.CompletedProcess, out: Path) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1].startswith("Top-1 accuracy: "), result.stdout
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory) -> None:
    """Folder indexes go to a fresh cache, not the user's (scripts run by the tests inherit it)."""
    os.environ["BACKBONES_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> tuple[Path, dict, subprocess.CompletedProcess]:
    """The README's quick start, run as written (into its own folder), shared by the tests that check what it
    promises and what a run leaves."""
    work = tmp_path_factory.mktemp("digits")
    out = work / "run"
    command = quick_start_commands()[0].split(" && ", 1)[1].split()  # without its pip install
    assert command[:2] == ["python", "digits.py"]
    result = run_script("digits.py", *command[2:], "--workers", "0", "--out", out, "--results", work / "results.csv")
    return out, finished_run(result, out), result


SWEEP_BACKBONES = ("mobilenet_v3_large", "shufflenet_v2_x2_0")
SWEEP_SEEDS = (0, 1)


@pytest.fixture(scope="session")
def digits_sweep(tmp_path_factory) -> Path:
    """Two backbones x two seeds of a short digits run, each in its own folder, as a sweep would leave them."""
    folder = tmp_path_factory.mktemp("sweep") / "runs"
    base = [a for a in FAST if a not in ("-model", "mobilenet_v3_large", "-bs", "8", "--image-size", "32")]
    for backbone in SWEEP_BACKBONES:
        for seed in SWEEP_SEEDS:
            out = folder / f"{backbone}-s{seed}"
            result = run_script(
                "digits.py", "-model", backbone, "-bs", "64", *base, "--seed", seed, "--out", out,
                "--results", folder.parent / "results.csv",
            )  # fmt: skip
            finished_run(result, out)
    return folder


@pytest.fixture(scope="session")
def robust_sweep_report(digits_sweep, tmp_path_factory):
    """The digits sweep, analysed with three corruptions, one run again with another request; and its report."""
    runs = tmp_path_factory.mktemp("robust-sweep") / "runs"
    shutil.copytree(digits_sweep, runs, ignore=shutil.ignore_patterns("robustness.json"))
    subset = ("--corruptions", "gaussian_noise", "defocus_blur", "contrast", "--severities", "1", "4")
    result = run_script("robustness.py", "--runs", runs, *subset)
    assert result.returncode == 0, result.stderr[-3000:]
    odd = runs / f"{SWEEP_BACKBONES[1]}-s1"
    again = run_inline("robustness.py", "--runs", odd, "--corruptions", "fog", "--no-invariance", "--force")
    assert again.returncode == 0, again.stderr
    report = runs.parent / "report"
    result = run_script("report.py", "--runs", runs, "--out", report)
    assert result.returncode == 0, result.stderr[-3000:]
    return runs, report, (report / "report.md").read_text()


@pytest.fixture(scope="session")
def folder_runs(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """A folder of photographs' worth of class folders (PNG files on disk), and a short run of three backbones
    of different families on it: a ConvNet, a Transformer and WaveMix's wavelets. For predict.py and export.py,
    which read images from files."""
    work = tmp_path_factory.mktemp("folder-runs")
    data = make_class_folders(work / "photos", {"cat": 12, "dog": 12, "owl": 12})
    runs = {}
    for backbone in ("mobilenet_v3_large", "swin_t", "wavemix"):
        out = work / "runs" / backbone
        args = [a if a != "mobilenet_v3_large" else backbone for a in FAST]
        result = run_script("imagefolder.py", *args, "--data", data, "--out", out, "--results", work / "r.csv")
        finished_run(result, out)
        runs[backbone] = out
    return data, runs


def setting_folder(report: Path, setting: str = "digits-val-32x32-default-none") -> Path:
    """The folder of one setting in a report: its readable name, then a hash of the whole setting."""
    (folder,) = [path for path in report.iterdir() if path.is_dir() and path.name.rsplit("-", 1)[0] == setting]
    return folder


def plant_imagenet_weights(name: str, torch_home: Path) -> dict:
    """Save a randomly initialised model where torch.hub caches `name`'s ImageNet checkpoint; return its state."""
    import torch

    from backbones import models

    entry = models.BACKBONES[name]
    url = entry.imagenet if isinstance(entry.imagenet, str) else entry.imagenet.url
    state = entry.builder().state_dict()
    target = torch_home / "hub" / "checkpoints" / Path(urlparse(url).path).name
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, target)
    return state
