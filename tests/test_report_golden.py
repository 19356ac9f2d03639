"""The report of a fixed set of runs, file by file, against the one committed under tests/golden/report_tables/: a
change to how runs are read, grouped, compared at their learning rate, ranked, tied or skipped that alters any table
shows up here as a diff to review, so a refactor can show that it changed nothing.

After an intended change, rewrite the expected files and commit their diff with the reason:
    BACKBONES_WRITE_GOLDEN=1 python -m pytest tests/test_report_golden.py
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pandas as pd
from fake_runs import write_run

from conftest import run_inline

GOLDEN = Path(__file__).parent / "golden" / "report_tables"
COMPARED = (".md", ".csv")  # the plots and the page embed matplotlib's rendering, which varies by version


COST = {
    "mobilenet_v3_large": (0.22, 5.5e6),
    "resnet50": (4.1, 25.6e6),
    "convnext_tiny": (4.5, 28.6e6),
    "swin_t": (4.5, 28.3e6),
}  # GFLOPs and parameters: the cheapest of a tied set is named by them


def write_runs(root: Path) -> None:
    """Three backbones x three seeds on one folder, one of them at two learning rates (the one validated worse
    tests better); two backbones on a second folder (another setting); one damaged run."""

    def run(folder: Path, model: str, seed: int, accuracy: float, **fields) -> None:
        gflops, params = COST[model]
        write_run(folder, model=model, seed=seed, accuracy=accuracy, gflops=gflops, params=int(params), **fields)

    for seed in range(3):
        for model, accuracy in (("mobilenet_v3_large", 0.8), ("resnet50", 0.82), ("convnext_tiny", 0.55)):
            run(root / f"photos-{model}-s{seed}", model, seed, accuracy, n_test=60, selection_top1=70.0 + seed)
        run(root / f"photos-resnet50-lr0.01-s{seed}", "resnet50", seed, 0.9, lr=0.01, n_test=60,
            selection_top1=50.0 + seed)  # fmt: skip
        for model, accuracy in (("swin_t", 0.7), ("resnet50", 0.7)):
            run(root / f"scans-{model}-s{seed}", model, seed, accuracy, data="/data/scans",
                dataset_fingerprint="fedcba9876543210", class_names=("benign", "malignant"))  # fmt: skip
    write_run(root / "damaged", seed=9, top1="high")


def report_files(folder: Path, runs: Path) -> dict[str, str]:
    """Every compared file of a report by its path inside it, with the runs' folder written as <runs>."""
    return {
        str(path.relative_to(folder)): path.read_text().replace(str(runs), "<runs>")
        for path in sorted(folder.rglob("*"))
        if path.suffix in COMPARED
    }


def test_the_report_of_fixed_runs_is_the_committed_one(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "report"
    write_runs(runs)
    result = run_inline("report.py", "--runs", runs, "--out", out)
    assert result.returncode == 0, result.stderr
    made = report_files(out, runs)
    if os.environ.get("BACKBONES_WRITE_GOLDEN"):
        shutil.rmtree(GOLDEN, ignore_errors=True)
        for name, text in made.items():
            (GOLDEN / name).parent.mkdir(parents=True, exist_ok=True)
            (GOLDEN / name).write_text(text)
    expected = {str(path.relative_to(GOLDEN)): path.read_text() for path in sorted(GOLDEN.rglob("*")) if path.is_file()}
    assert expected, f"{GOLDEN} holds no expected files: is it committed (and not ignored by .gitignore)?"
    assert sorted(made) == sorted(expected)
    for name, text in expected.items():
        if name.endswith(".csv"):  # the same cells; numbers to 1e-9 (a library's summation order may differ)
            read = lambda text: pd.read_csv(io.StringIO(text), keep_default_na=False)  # noqa: E731
            pd.testing.assert_frame_equal(read(made[name]), read(text), check_exact=False, rtol=1e-9, obj=name)
        else:
            assert made[name] == text, f"{name} differs from tests/golden/report_tables/{name}"
