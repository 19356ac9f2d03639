"""The `backbones` command (what `pip install .` installs) reaches every tool, and the package is installable."""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys

import pytest
from packaging.requirements import Requirement

from backbones import cli, datasets
from conftest import ROOT, assert_clean_error, call_captured


def backbones(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backbones", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def in_process(*args: str) -> subprocess.CompletedProcess:
    """`backbones <args>` through cli.main inside the test process: the dispatch, without a start-up each time."""
    return call_captured(lambda: cli.main(list(args)), ["backbones", *args])


@pytest.mark.slow
def test_the_command_reaches_training_and_every_tool():
    train = backbones("train", "digits", "--help")  # the installed module's entry point, in a process of its own
    assert train.returncode == 0 and "Digits (scikit-learn)" in train.stdout and "--batch-size" in train.stdout
    help_phrases = {"report": "--rankings", "rank": "--runs", "sweep": "--launcher", "split": "--val_size",
                    "bench": "--steps", "predict": "--min-confidence", "export": "--format",
                    "robustness": "--corruptions", "choose": "--lr-grid"}  # fmt: skip
    assert sorted([*help_phrases, "train"]) == sorted(cli.TOOLS)  # a new tool is checked here too
    for tool, phrase in help_phrases.items():
        result = in_process(tool, "--help")
        assert result.returncode == 0 and phrase in result.stdout, (tool, result.stderr[-500:])
    assert_clean_error(in_process("report", "--runs", str(ROOT / "no-such-folder")), "is not a folder")
    wrong = in_process("train", "mnist")
    assert wrong.returncode == 2 and "train needs a dataset first, one of: breakhis" in wrong.stderr


def test_the_installed_package_declares_its_command_and_dependencies():
    (script,) = importlib.metadata.entry_points(group="console_scripts", name="backbones")
    assert script.value == "backbones.cli:main"
    declared = list(map(Requirement, importlib.metadata.requires("backbones")))
    installed = {(r.name, r.specifier) for r in declared if r.marker is None}
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    assert installed == {(r.name, r.specifier) for r in map(Requirement, filter(None, lines))}
    export = {r.name for r in declared if r.marker is not None and r.marker.evaluate({"extra": "export"})}
    assert export == {"onnx", "onnxscript", "onnxruntime"}  # pip install 'backbones[export]'


def test_the_report_layer_loads_no_pytorch():
    """report.py only reads files: importing it must not pay for PyTorch (seconds of start-up on a laptop)."""
    code = (
        "import sys, backbones.report; print(sorted(m for m in ('torch', 'torchvision', 'timm') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr[-2000:] + result.stdout


def test_every_flag_has_a_kebab_case_spelling(monkeypatch):
    """The original's spellings (`-model`, `-bs`, `--input_dir`, BreakHis's `-mag`) keep working, and each has a
    `--kebab-case` twin, as users of other command lines expect; checked on every parser that --help shows."""
    parsers = []
    show = argparse.ArgumentParser.print_help
    monkeypatch.setattr(argparse.ArgumentParser, "print_help", lambda self, *a: (parsers.append(self), show(self, *a)))
    commands = [[tool, "--help"] for tool in cli.TOOLS if tool != "train"]
    commands += [["train", name, "--help"] for name in datasets.NAMES]
    for command in commands:
        assert in_process(*command).returncode == 0, command
    assert len(parsers) == len(commands)
    missing = {
        (parser.prog, "/".join(action.option_strings))
        for parser in parsers
        for action in parser._actions
        if any("_" in name or not name.startswith("--") for name in action.option_strings if name != "-h")
        and not any(name.startswith("--") and "_" not in name for name in action.option_strings)
    }
    assert not missing, sorted(missing)
