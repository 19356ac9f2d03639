"""Shared helpers: small datasets written in each dataset's published on-disk format, and a script runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    """One short digits run from scratch, shared by the tests that inspect what a run leaves."""
    work = tmp_path_factory.mktemp("digits")
    out = work / "run"
    result = run_script(
        "digits.py",
        "-model",
        "mobilenet",
        "-bs",
        "64",
        "--weights",
        "none",
        "--max-epochs",
        "2",
        "--workers",
        "0",
        "--out",
        out,
        "--results",
        work / "results.csv",
    )
    return out, finished_run(result, out), result
