"""The README's promises: its quick start is what CI runs, and every flag is documented."""

from __future__ import annotations

import re

import pytest

from conftest import ROOT, run_script

README = (ROOT / "README.md").read_text()


def quick_start_commands() -> list[str]:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_quick_start_is_exactly_two_commands_and_ci_runs_the_second():
    commands = quick_start_commands()
    assert len(commands) == 2
    assert commands[0].startswith("pip install -r requirements.txt && python digits.py ")
    assert "--weights none" in commands[0]  # the offline default must not need a download
    assert commands[1].startswith("pip install -r requirements-dev.txt && ")
    assert "grep -m1 '^pip install -r requirements-dev.txt' README.md" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("script", ["breakhis.py", "imagefolder.py", "split.py"])
def test_every_flag_in_help_is_in_the_readme(script):
    result = run_script(script, "--help")
    assert result.returncode == 0
    flags = set(re.findall(r"(?<![\w-])(--?[a-z][a-z0-9_-]*)", result.stdout)) - {"-h", "--help"}
    assert flags, result.stdout
    missing = sorted(flag for flag in flags if f"`{flag}" not in README and f" {flag} " not in README)
    assert not missing, f"flags missing from README: {missing}"
