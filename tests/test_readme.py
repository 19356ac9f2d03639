"""The README's promises: its quick start is what CI runs, and every flag is documented."""

from __future__ import annotations

import re

import pytest

from backbones import datasets
from conftest import ROOT, quick_start_commands, run_inline

README = (ROOT / "README.md").read_text()


def test_quick_start_is_exactly_two_commands_and_ci_runs_the_second():
    commands = quick_start_commands()
    assert len(commands) == 2
    assert commands[0].startswith("pip install -r requirements.txt && python digits.py ")
    assert "--weights none" in commands[0]  # the offline default must not need a download
    assert commands[1].startswith("pip install -r requirements-dev.txt && ")
    assert "grep -m1 '^pip install -r requirements-dev.txt' README.md" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
def test_the_quick_start_prints_the_accuracy_it_promises(digits_run):
    _, metrics, result = digits_run
    promise = re.search(r"prints\s+`Top-1 accuracy: (\d)x\.xx%`", README).group(1)  # 'prints Top-1 accuracy: 9x.xx%'
    last = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(rf"Top-1 accuracy: {promise}\d\.\d\d%", last), last
    assert metrics["config"]["max_epochs"] == 5 and metrics["weights"] == "none"


SCRIPTS = sorted(p.name for p in ROOT.glob("*.py") if "from backbones.finetune import run" in p.read_text())


def test_every_dataset_script_has_a_row_in_the_dataset_table():
    table = README.split("## Datasets", 1)[1].split("\n## ", 1)[0]
    assert [script for script in SCRIPTS if f"| `{script}" not in table] == []


def documented_flags(help_text: str) -> set[str]:
    options = help_text.split("options:", 1)[1]  # the flags themselves, not the prose above them
    return set(re.findall(r"(?<![\w-])(--?[a-z][a-z0-9_-]*)", options)) - {"-h", "--help"}


def missing_from_readme(flags: set[str]) -> list[str]:
    assert flags
    return sorted(flag for flag in flags if f"`{flag}" not in README and f" {flag} " not in README)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_flag_of_every_dataset_script_is_in_the_readme(script):
    from backbones import options

    spec = datasets.spec(script.removesuffix(".py"))
    assert missing_from_readme(documented_flags(options.build_parser(spec).format_help())) == []


@pytest.mark.parametrize(
    "script",
    [
        "split.py",
        "report.py",
        "rank.py",
        "choose.py",
        "sweep.py",
        "bench.py",
        "robustness.py",
        "predict.py",
        "export.py",
    ],
)
def test_every_flag_of_the_other_scripts_is_in_the_readme(script):
    result = run_inline(script, "--help")
    assert result.returncode == 0
    assert missing_from_readme(documented_flags(result.stdout)) == []
