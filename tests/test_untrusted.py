"""Run folders, reports and sweeps are shared, so what the tool reads is untrusted: nothing a file says reaches
outside it, a report is all or nothing, and a damaged run is skipped with its reason. Fake runs (written without
training, tests/fake_runs.py) keep these in the fast tier."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
from fake_runs import write_run

from backbones import report
from backbones.report_html import cells
from backbones.runtable import md
from conftest import assert_clean_error, run_inline

BACKBONES = ("mobilenet_v3_large", "resnet50")


def sweep(root: Path, **fields) -> Path:
    """Two backbones x two seeds of fake runs under root/runs."""
    for model in BACKBONES:
        for seed in (0, 1):
            write_run(root / "runs" / f"{model}-s{seed}", model=model, seed=seed, **fields)
    return root / "runs"


def make_report(runs: Path, out: Path, *more: str):
    return run_inline("report.py", "--runs", runs, *more, "--out", out)


# ------------------------------------------------------------------------------------ reaching outside a file
def test_a_crafted_model_name_or_folder_cannot_put_a_local_file_into_the_page(tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"PRIVATE-KEY-MATERIAL")
    runs = sweep(tmp_path)
    write_run(runs / "crafted", model=f"resnet50\n![x]({secret})", seed=5)
    write_run(runs / f"odd\n![x]({secret.name})", seed=6)  # a folder name can hold a line break
    (runs / "unfinished" / "x").mkdir(parents=True)
    (runs / "unfinished" / "log.txt").write_text(f"![x]({secret})")
    result = make_report(runs, tmp_path / "report")
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "report" / "index.html").read_text()
    assert base64.b64encode(b"PRIVATE-KEY-MATERIAL").decode() not in page and "PRIVATE" not in page
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert not [line for line in markdown.splitlines() if line.startswith("![") and "secret" in line]
    assert "model 'resnet50\\n![x]" in " ".join(markdown.split()) or "is not a backbone name" in markdown


def test_an_image_line_is_embedded_only_for_a_plot_inside_the_report(tmp_path):
    from backbones.report_html import to_html

    folder = tmp_path / "report"
    (folder / "setting").mkdir(parents=True)
    (folder / "setting" / "cost.png").write_bytes(b"\x89PNG plot")
    (tmp_path / "outside.png").write_bytes(b"outside")
    (folder / "link.png").symlink_to(tmp_path / "outside.png")
    page = to_html(
        "![a](setting/cost.png)\n![b](/etc/hostname)\n![c](../outside.png)\n![d](link.png)\n![e](setting)", folder
    )
    assert page.count("<img") == 1 and base64.b64encode(b"\x89PNG plot").decode() in page
    assert base64.b64encode(b"outside").decode() not in page
    assert page.count("not a plot of this report") == 4


def test_a_class_name_with_pipes_stays_in_its_column(tmp_path):
    runs = sweep(tmp_path, class_names=("a|b|c", "dog", "owl`x`"))
    assert make_report(runs, tmp_path / "report").returncode == 0
    markdown = (tmp_path / "report" / "report.md").read_text()
    table = markdown.split("Classes the backbones disagree on most", 1)[1].split("\n\n")[1].splitlines()
    widths = {len(cells(line)) for line in table}
    assert widths == {2 + len(BACKBONES)}, table  # class, spread, one column per backbone
    assert any(cells(line)[0] == md("a|b|c") for line in table[2:])
    page = (tmp_path / "report" / "index.html").read_text()
    assert "<td>a|b|c</td>" in page


def test_markdown_escaping_keeps_every_name_on_one_line_and_inert():
    for name in ("a|b", "x\r", "y\nz", "![i](/etc/passwd)", "[l](http://x)", "`c`", "**b**", "<script>"):
        escaped = md(name)
        assert "\n" not in escaped and "\r" not in escaped
        assert not re.search(r"(?<!\\)[|`*\[\]<>]", escaped), escaped
        from backbones.report_html import inline

        assert "<script>" not in inline(escaped) and "<strong>" not in inline(escaped)


def test_a_planted_symbolic_link_in_the_output_folder_is_not_followed(tmp_path):
    runs = sweep(tmp_path)
    out = tmp_path / "report"
    assert make_report(runs, out).returncode == 0
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    (out / "index.html").unlink()
    (out / "index.html").symlink_to(victim)
    assert make_report(runs, out).returncode == 0
    assert victim.read_text() == "mine" and not (out / "index.html").is_symlink()


# --------------------------------------------------------------------------------------- all or nothing
def test_a_report_killed_midway_leaves_the_earlier_one_and_the_next_succeeds(tmp_path, monkeypatch):
    runs = sweep(tmp_path)
    out = tmp_path / "report"
    assert make_report(runs, out).returncode == 0
    earlier = (out / "report.md").read_text()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # what a kill at this point leaves: every file but the page written

    monkeypatch.setattr(report, "write_html", killed)
    assert make_report(runs, out).returncode == 130
    assert (out / "report.md").read_text() == earlier and (out / "index.html").exists()
    monkeypatch.undo()
    assert make_report(runs, out).returncode == 0
    assert not list(tmp_path.glob(".report.building-*"))


def test_files_of_an_earlier_report_do_not_survive_beside_a_new_one(tmp_path):
    runs = sweep(tmp_path)
    out = tmp_path / "report"
    assert make_report(runs, out).returncode == 0
    stale = next(out.glob("*/")) / "robustness.csv"
    stale.write_text("old")
    (out / "old-setting").mkdir()
    (out / "old-setting" / "leaderboard.csv").write_text("old")
    assert make_report(runs, out).returncode == 0
    assert not stale.exists() and not (out / "old-setting").exists()


def test_an_output_folder_holding_other_files_is_refused_and_kept(tmp_path):
    runs = sweep(tmp_path)
    out = tmp_path / "report"
    assert make_report(runs, out).returncode == 0
    (out / "notes.txt").write_text("mine")
    assert_clean_error(make_report(runs, out), "does not hold only an earlier report", "notes.txt")
    assert (out / "notes.txt").read_text() == "mine"


def test_two_settings_never_share_a_folder(tmp_path):
    runs = tmp_path / "runs"
    for data, fingerprint in (("/data/my photos", "aaaaaa11"), ("/data/my_photos", "bbbbbb22")):
        for model in BACKBONES:
            write_run(runs / f"{Path(data).name}-{model}", model=model, data=data, dataset_fingerprint=fingerprint)
    assert make_report(runs, tmp_path / "report").returncode == 0
    folders = sorted(p.name for p in (tmp_path / "report").iterdir() if p.is_dir())
    assert len(folders) == 2 and all(f.startswith("imagefolder-my-photos-") for f in folders), folders


def test_spreadsheet_formulas_and_line_breaks_are_neutral_in_the_csvs(tmp_path):
    import pandas as pd

    runs = sweep(tmp_path, class_names=("=HYPERLINK(1)", "dog\r", "owl"))
    assert make_report(runs, tmp_path / "report").returncode == 0
    setting = next((tmp_path / "report").glob("*/"))
    kappa = pd.read_csv(setting / "error_consistency.csv", index_col=0)
    assert kappa.shape == (2, 2)
    board = pd.read_csv(setting / "leaderboard.csv")
    assert len(board) == 2


# ---------------------------------------------------------------------------- damaged run files are skipped
DAMAGED = {
    "nan-top1": ({"top1": float("nan")}, "top1 is nan, not a finite number"),
    "infinite-top1": ({"top1": float("inf")}, "top1 is inf, not a finite number"),
    "top1-over-100": ({"top1": 130.0}, "top1 is 130.0, outside 0-100%"),
    "history-a-string": ({"history": "epochs"}, "history is not a list of epochs"),
    "classes-missing": ({"classes": None}, "classes and num_classes are missing or disagree"),
    "classes-a-number": ({"classes": 3}, "classes and num_classes are missing or disagree"),
    "data-options-list": ({"dataset_options": []}, "dataset_options is [], not a dict"),
    "size-of-three": ({"image_size": [32, 32, 3]}, "image_size is [32, 32, 3], not [height, width]"),
    "model-with-a-newline": ({"model": "resnet50\nx"}, "is not a backbone name"),
    "seed-a-float": ({"seed": 0.5}, "seed is 0.5, not a whole number"),
}


def test_damaged_metrics_are_skipped_with_their_reason(tmp_path):
    runs = sweep(tmp_path)
    for name, (fields, _) in DAMAGED.items():
        record = write_run(runs / name, seed=7)
        (runs / name / "metrics.json").write_text(json.dumps({**record, **fields}))
    (runs / "deep").mkdir()
    (runs / "deep" / "metrics.json").write_text("[" * 100_000 + "]" * 100_000)
    result = make_report(runs, tmp_path / "report")
    assert result.returncode == 0, result.stderr
    printed = " ".join(result.stdout.split())
    for name, (_, reason) in DAMAGED.items():
        assert f"{runs / name}: metrics.json is malformed: " in printed and reason in printed, name
    assert f"{runs / 'deep'}: metrics.json is nested too deeply" in printed
    assert "4 runs from" in (tmp_path / "report" / "report.md").read_text()


@pytest.mark.parametrize(
    "logits,labels,reason",
    [
        (np.zeros((30, 9), np.float32), np.arange(30) % 3, "9 logit columns for 3 classes"),
        (np.zeros((30, 3), np.float32), np.arange(30) % 3 + 5, "labels outside 0-2"),
        (np.full((30, 3), np.nan, np.float32), np.arange(30) % 3, "not finite numbers"),
        (np.zeros((30,), np.float32), np.arange(30) % 3, "not one row per image"),
        (np.zeros((20, 3), np.float32), np.arange(20) % 3, "holds 20 test images, metrics.json says 30"),
    ],
)
def test_damaged_test_outputs_are_skipped_with_their_reason(tmp_path, logits, labels, reason):
    runs = sweep(tmp_path)
    write_run(runs / "damaged", seed=7)
    np.savez_compressed(runs / "damaged" / "test_outputs.npz", logits=logits, labels=labels)
    result = make_report(runs, tmp_path / "report")
    assert result.returncode == 0, result.stderr
    assert reason in " ".join(result.stdout.split())


def analysis_of(run: dict, **fields) -> dict:
    """A robustness.json for `run` as robustness.py writes one (three corruptions, one severity)."""
    found = {
        "run": run["out"], "dataset": run["dataset"], "dataset_fingerprint": run["dataset_fingerprint"],
        "model": run["model"], "seed": run["seed"], "n_test": run["n_test"],
        "request": {"corruptions": ["gaussian_noise"], "severities": [1], "seed": 0, "invariance": False},
        "clean": {"top1": run["top1"], "recorded_top1": run["top1"], "reproduces_record": True},
        "mean_corruption_top1": 0.5 * run["top1"], "relative_drop": 0.5,
        "family_top1": {"noise": 0.5 * run["top1"]},
        "corruptions": {"gaussian_noise": {"family": "noise", "parameters": [0.08], "severities": [
            {"severity": 1, "top1": 0.5 * run["top1"], "nll": 1.0, "true_class_prob": 0.5}]}},
        "invariance": {}, "confusion_pairs": [], "image_corruption_top1": [0.5] * run["n_test"],
        "seconds": {"corruption": 1.0, "inference": 10.0, "corruption_over_inference": 0.1},
    }  # fmt: skip
    found.update(fields)
    return found


def test_a_robustness_analysis_must_belong_to_its_run(tmp_path):
    runs = tmp_path / "runs"
    records = {}
    for model in BACKBONES:
        for seed in (0, 1):
            folder = runs / f"{model}-s{seed}"
            records[folder.name] = write_run(folder, model=model, seed=seed)
            (folder / "robustness.json").write_text(json.dumps(analysis_of(records[folder.name])))
    other = records["resnet50-s1"]
    (runs / "resnet50-s0" / "robustness.json").write_text(json.dumps(analysis_of(other)))  # copied from another run
    made_up = analysis_of(records["mobilenet_v3_large-s1"], mean_corruption_top1=float("inf"))
    (runs / "mobilenet_v3_large-s1" / "robustness.json").write_text(json.dumps(made_up))
    result = make_report(runs, tmp_path / "report")
    assert result.returncode == 0, result.stderr
    markdown = " ".join((tmp_path / "report" / "report.md").read_text().split())
    assert "resnet50-s0/robustness.json: robustness.json was written for another run" in markdown
    assert (
        "mobilenet\\_v3\\_large-s1/robustness.json" in markdown or "mobilenet_v3_large-s1/robustness.json" in markdown
    )
    assert "mean_corruption_top1 is inf, not a finite number" in markdown.replace("\\_", "_")
    assert "inf%" not in markdown


# ------------------------------------------------------------------------------------------------- sweeps
def test_a_slurm_value_with_a_line_break_is_refused(tmp_path):
    for flag in ("--slurm-extra", "--slurm-partition"):
        value = "constraint=a100\ntouch /tmp/x #" if flag == "--slurm-extra" else "gpu\nrm -rf ~"
        assert_clean_error(
            run_inline(
                "sweep.py",
                "--models",
                "mobilenet",
                "--datasets",
                "digits",
                "--launcher",
                "slurm",
                flag,
                value,
                "--out",
                tmp_path / "s",
                "--dry-run",
            ),  # fmt: skip
            "line break or another control character",
        )


def test_a_dry_run_prints_commands_quoted_for_the_shell(tmp_path):
    import shlex

    out = tmp_path / "my sweep"
    result = run_inline("sweep.py", "--models", "mobilenet", "--datasets", "digits", "--out", out, "--dry-run",
                        "--", "--data", "it's here")  # fmt: skip
    assert result.returncode == 0, result.stderr
    command = result.stdout.strip().splitlines()[-1].split(None, 1)[1]
    words = shlex.split(command)
    assert words[words.index("--data") + 1] == "it's here"
    assert words[words.index("--out") + 1].startswith(str(out))
