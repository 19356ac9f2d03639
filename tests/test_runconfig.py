"""config.json keeps a run's configuration as flag values by name, and --config, --resume and the analyses rebuild
the run from them: the same configuration, the flags given now winning, every value from the file checked by its
flag's own type. No training: `resolve` reads no data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backbones.datasets import digits, galaxy10
from backbones.errors import UserError
from backbones.runconfig import command_line, given_flags, resolve
from backbones.runfolder import RunFolder

ORIGINAL = ["-model", "convnext", "-bs", "16", "--weights", "none", "--image-size", "24x32", "--lr", "0.0003"]
ORIGINAL += ["--train-fraction", "0.5", "--no-download", "--seed", "3", "--results", "mine.csv", "--compile"]


def saved(tmp_path: Path, spec=digits.SPEC, argv=ORIGINAL) -> Path:
    """config.json as a run given `argv` writes it into its folder."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(resolve(spec, [*argv, "--out", str(tmp_path / "first")]).to_json()))
    return path


def where_left_out(flags: dict) -> dict:
    return {name: value for name, value in flags.items() if name not in ("out", "config")}


def test_a_relaunch_from_config_json_is_the_run_it_was_written_by(tmp_path):
    relaunched = resolve(digits.SPEC, ["--config", str(saved(tmp_path))])
    original = resolve(digits.SPEC, ORIGINAL)
    assert where_left_out(relaunched.flags) == where_left_out(original.flags)
    assert (relaunched.model, relaunched.seed, relaunched.image_size) == ("convnext_tiny", 3, (24, 32))
    assert (relaunched.train.lr, relaunched.data.train_fraction, relaunched.data.download) == (3e-4, 0.5, False)
    assert relaunched.compile and relaunched.results == Path("mine.csv")
    assert relaunched.out is None  # a relaunch is a new run: the first run's folder is not reused


def test_config_json_says_the_given_flags_by_name_and_as_a_command_line(tmp_path):
    written = json.loads(saved(tmp_path).read_text())
    assert written["script"] == "digits.py"
    assert written["given"]["image_size"] == [24, 32] and written["given"]["bs"] == 16
    assert "patience" not in written["given"] and written["config"]["patience"] == 10  # resolved, not given
    assert written["argv"][:4] == ["--model", "convnext", "--batch-size", "16"]
    assert "--no-download" in written["argv"] and "--compile" in written["argv"]
    # the command line gives the same flags back, as a user of an older version would run it
    assert (
        resolve(digits.SPEC, written["argv"]).flags
        == resolve(digits.SPEC, ORIGINAL + ["--out", str(tmp_path / "first")]).flags
    )


def test_flags_given_now_win_over_the_saved_ones(tmp_path):
    config = saved(tmp_path)
    changed = resolve(digits.SPEC, ["--config", str(config), "--lr", "0.01", "-bs", "4", "--download"])
    assert (changed.train.lr, changed.batch_size, changed.data.download) == (0.01, 4, True)
    assert changed.seed == 3 and changed.model == "convnext_tiny"
    # the other of two exclusive flags replaces the saved one rather than clashing with it
    shots = resolve(digits.SPEC, ["--config", str(config), "--shots", "5"])
    assert (shots.data.shots, shots.data.train_fraction) == (5, 1.0)


def test_a_relaunch_under_the_paper_protocol_takes_its_defaults_not_the_resolved_ones(tmp_path):
    config = saved(tmp_path, galaxy10.SPEC, ["-model", "resnet50", "--weights", "none"])
    recipe = galaxy10.SPEC.paper_recipe({})
    assert json.loads(config.read_text())["config"]["lr"] == 1e-3  # the default protocol's, resolved
    paper = resolve(galaxy10.SPEC, ["--config", str(config), "--protocol", "paper"])
    assert (paper.train.lr, paper.train.patience, paper.train.sgd_patience) == (recipe.lr, *recipe.patience)
    assert recipe.lr != 1e-3


def test_resume_takes_the_flags_of_the_run_in_its_folder(tmp_path):
    out = tmp_path / "killed"
    out.mkdir()
    RunFolder(out).config.write_text(json.dumps(resolve(digits.SPEC, [*ORIGINAL, "--out", str(out)]).to_json()))
    resumed = resolve(digits.SPEC, ["--resume", "--out", str(out)])
    assert where_left_out(resumed.flags) == {**where_left_out(resolve(digits.SPEC, ORIGINAL).flags), "resume": True}
    assert resumed.out == out


def test_a_config_json_written_before_the_flags_by_name_relaunches_from_its_command_line(tmp_path):
    older = tmp_path / "config.json"
    older.write_text(json.dumps({"schema": 1, "script": "digits.py", "argv": ["-model", "resnet50", "--lr", "0.02"]}))
    relaunched = resolve(digits.SPEC, ["--config", str(older)])
    assert (relaunched.model, relaunched.train.lr) == ("resnet50", 0.02)


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ({"bs": -3}, "--batch-size is -3: must be at least 1"),
        ({"bs": 2.5}, "--batch-size is 2.5"),
        ({"lr": "nan"}, "--lr is 'nan': must be a finite number"),
        ({"image_size": [4, 4]}, "--image-size is [4, 4]"),
        ({"image_size": {"h": 1}}, "--image-size is {'h': 1}, not a value of that flag"),
        ({"finetune": "partial"}, "--finetune is 'partial', not one of full, head"),
        ({"compile": "yes"}, "--compile is 'yes', not true or false"),
        ({"shell": "rm -rf ~"}, "'shell' is not a flag of digits.py"),
        ([["-model", "x"]], "given flags are not flags by name"),
    ],
)
def test_a_crafted_config_json_is_refused_naming_the_bad_flag(tmp_path, given, says):
    crafted = tmp_path / "config.json"
    flags = given[0] if isinstance(given, list) else {"model": "resnet50", **given}
    crafted.write_text(json.dumps({"schema": 1, "script": "digits.py", "argv": [], "given": flags}))
    with pytest.raises(UserError, match="cannot be read as a run's config.json") as raised:
        resolve(digits.SPEC, ["--config", str(crafted)])
    assert says in str(raised.value)


def test_the_command_line_of_given_flags_parses_back_to_them():
    given = {"model": "resnet50", "bs": 16, "download": False, "compile": True, "image_size": [24, 32], "seed": 0}
    tokens = command_line(digits.SPEC, given)
    assert tokens == [
        "--model", "resnet50", "--batch-size", "16", "--image-size", "24x32", "--compile", "--seed", "0",
        "--no-download",
    ]  # fmt: skip
    assert given_flags(digits.SPEC, tokens) == {**given, "image_size": (24, 32)}


def test_help_and_usage_show_the_defaults_and_the_required_flag(capsys):
    with pytest.raises(SystemExit) as exited:
        resolve(digits.SPEC, ["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert exited.value.code == 0
    assert "[-h] -model MODEL [-bs BS]" in shown  # -model required, not in brackets
    assert "batch size (default: 32)" in shown and "(default: 0.1)" in shown
    with pytest.raises(SystemExit):
        resolve(digits.SPEC, ["-model", "resnet50", "-bs", "0"])
    assert "[-h] -model MODEL" in capsys.readouterr().err
