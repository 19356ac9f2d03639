"""choose.py: the race's arithmetic against schedules worked out by hand, the budget's minimum, the protocol's
guarantee that the test split waits for the confirmation, and a killed choose resuming to the same decisions."""

from __future__ import annotations

import collections
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from backbones import choose, finetune, rank
from backbones.errors import UserError
from backbones.files import claim
from backbones.race import Pair, RaceState, Rung, keep_count, plan, survivors
from conftest import ROOT, assert_clean_error, run_inline

TINY = ("timm:test_resnet", "timm:test_efficientnet")  # two families, about a second an epoch at 32 px
RUN_FLAGS = ["-bs", "64", "--weights", "none", "--image-size", "32", "--workers", "0", "--patience", "2"]


def choose_args(out: Path, budget: str = "30", *extra: str) -> list[str]:
    own = ["--dataset", "digits", "--budget", budget, "--models", *TINY, "--lr-grid", "1e-3", "3e-3"]
    own += ["--seeds", "0", "1"]
    return [*own, "--out", str(out), *extra, *RUN_FLAGS]


def test_rungs_follow_a_schedule_worked_out_by_hand():
    # 27 pairs, eta 3, a first rung of 1 epoch, 1 finalist: 27 x 1 epoch; the best 9 to 3 epochs (9 x 2 more); the
    # best 3 to 9 (3 x 6 more): 27 + 18 + 18 = 63 epochs; the best 1 is the finalist, and stops there
    assert plan(27, 3, 1, 1000, 1) == [Rung(0, 1, 27), Rung(1, 3, 9), Rung(2, 9, 3)]
    assert plan(27, 3, 1, 62, 1) == [Rung(0, 1, 27), Rung(1, 3, 9)]  # the third rung's 18 epochs do not fit
    # 2 finalists: 12 x 1, then 4 x 2 more = 20; the best 2 are both finalists
    assert plan(12, 3, 1, 1000, 2) == [Rung(0, 1, 12), Rung(1, 3, 4)]
    # eta 2 from 8 pairs of 2 epochs: 8 x 2, 4 x 2 more, 2 x 4 more = 16 + 8 + 8 = 32
    assert plan(8, 2, 2, 1000, 1) == [Rung(0, 2, 8), Rung(1, 4, 4), Rung(2, 8, 2)]
    assert plan(8, 2, 2, 31, 1) == [Rung(0, 2, 8), Rung(1, 4, 4)]
    assert plan(12, 3, 1, 11, 2) == []  # not even the first rung


def test_the_best_third_goes_on_ties_keeping_the_better_ranked_pair():
    assert keep_count(12, 3, 2) == 4 and keep_count(5, 3, 2) == 2 and keep_count(2, 3, 2) == 2
    assert keep_count(1, 3, 2) == 1
    scores = [50.0, 70.0, 70.0, 10.0, 90.0, 60.0]
    assert survivors(scores, 3, 1) == [1, 4]  # 90 and the first of the two 70s
    assert survivors(scores, 3, 3) == [1, 2, 4]  # the floor keeps three
    assert survivors([1.0, 2.0, 3.0], 3, 2) == [1, 2]


@pytest.mark.parametrize(
    ("budget", "extra", "message"),
    [
        # 2 backbones x 2 rates = 4 pairs x 1 epoch within half the budget: 8; confirming 2 finalists x 2 seeds
        # x 2 phases = 8 epochs within the other half: 16
        ("15", [], "The minimum is 16 epochs"),
        ("7", ["--keep", "1"], "The minimum is 8 epochs"),  # 2 pairs: 4; 1 finalist x 2 seeds x 2 phases: 8
        ("30", ["--seed", "3"], "use --seeds instead"),
        ("30", ["--protocol", "paper"], "choose selects on validation"),
        ("30", ["--race-share", "1"], "--race-share 1 must lie between 0 and 1"),
        ("4x", [], "expected epochs (300) or a time"),
    ],
)
def test_bad_budgets_and_flags_get_a_clear_error_before_any_work(tmp_path, budget, extra, message):
    result = run_inline("choose.py", *choose_args(tmp_path / "choose", budget, *extra))
    assert_clean_error(result, message)
    assert result.returncode == 2
    assert not (tmp_path / "choose" / "ranking.csv").exists()


@pytest.mark.slow
def test_the_test_split_is_read_only_by_the_confirmation_once_per_run(tmp_path, monkeypatch):
    """Every read of a split's images (decoding into the cache, batching) is watched: the ranking and the race read
    the training and validation splits only; each confirmation run then scores the test split once. The answer then
    hands on the pick's run chosen on validation too, and predict.py classifies new images with it."""
    events = []

    def watch(module, name: str, split_of) -> None:
        original = getattr(module, name)

        def watched(*args, **kwargs):
            events.extend(split_of(*args, **kwargs))
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, watched)

    for module in (rank, finetune):  # every split rank and choose read goes through one of these two
        watch(module, "split_batches", lambda *a, **k: [a[4]])
        watch(module, "image_cache", lambda *a, **k: list(a[5] if len(a) > 5 else k.get("splits", ("all",))))
    confirm = choose.confirm

    def marked_confirm(*args, **kwargs):
        events.append("CONFIRMATION")
        return confirm(*args, **kwargs)

    monkeypatch.setattr(choose, "confirm", marked_confirm)
    result = choose.main(choose_args(tmp_path / "choose", "40"))
    before = events[: events.index("CONFIRMATION")]
    after = events[events.index("CONFIRMATION") + 1 :]
    assert set(before) == {"train", "val"}
    assert "all" not in after  # every image cache named its splits
    assert after.count("test") == 2 * 2 * 2  # per run: decoded into the cache once, batched once
    runs = sorted((tmp_path / "choose" / "confirm").glob("*/metrics.json"))
    assert len(runs) == 4 and {json.loads(p.read_text())["selection"] for p in runs} == {"val"}
    assert result["pick"] in result["tied"] and result["best"] in TINY
    # the run it hands on is the pick's seed with the best validation top-1, and predict.py takes it
    selected = {p.parent: json.loads(p.read_text()) for p in runs}
    of_pick = {folder: run["best_selection_top1"] for folder, run in selected.items() if run["model"] == result["pick"]}
    assert len(of_pick) == 2 and of_pick[Path(result["pick_run"])] == max(of_pick.values())
    new, digits = tmp_path / "new", load_digits()
    new.mkdir()
    for i in range(3):
        Image.fromarray((digits.images[i] * 16).astype(np.uint8)).save(new / f"{i}.png")
    predicted = run_inline("predict.py", "--run", result["pick_run"], new, "--out", tmp_path / "p.csv")
    assert predicted.returncode == 0, predicted.stderr
    assert sorted(pd.read_csv(tmp_path / "p.csv")["status"]) == ["ok"] * 3


def race_decisions(out: Path) -> tuple[pd.DataFrame, dict]:
    table = pd.read_csv(out / "race.csv").drop(columns=["seconds"])
    answer = json.loads((out / "answer.json").read_text())
    return table, {key: answer[key] for key in ("best", "tied", "pick", "pick_lr", "race_epochs", "epochs")}


ONE_SEED = ("--seeds", "0")  # one seed, and a budget of 20 epochs: 4 pairs x 1 epoch, the best 2 to 3 epochs, then
# 3 epochs a phase for each finalist's confirmation run


@pytest.fixture(scope="module")
def lone_choose(tmp_path_factory) -> Path:
    """A choose run by one worker, uninterrupted: the decisions a killed or shared one must reach."""
    reference = tmp_path_factory.mktemp("lone") / "choose"
    choose.main(choose_args(reference, "20", *ONE_SEED))
    return reference


@pytest.mark.slow
def test_a_choose_killed_mid_race_resumes_to_the_same_decisions(tmp_path, lone_choose):
    one_seed, reference = ONE_SEED, lone_choose
    killed = tmp_path / "killed"
    command = [sys.executable, str(ROOT / "choose.py"), *choose_args(killed, "20", *one_seed)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    third_pair = killed / "race" / "timm_test_efficientnet-lr0.001" / "history.csv"  # the race's third pair
    deadline = time.monotonic() + 600
    while not third_pair.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "answer.json").exists()  # killed in the race, not after it
    choose.main(choose_args(killed, "20", *one_seed))
    table, answer = race_decisions(killed)
    expected_table, expected_answer = race_decisions(reference)
    pd.testing.assert_frame_equal(table, expected_table)
    assert answer == expected_answer


@pytest.mark.slow
def test_two_workers_share_one_choose_each_pair_and_run_trained_once(tmp_path, lone_choose):
    """Two choose processes started together on one --out split the race and the confirmation: every (pair, rung)
    of the lone worker's race and every confirmation run is trained by exactly one of them, and they answer as it
    did."""
    shared = tmp_path / "shared"
    command = [sys.executable, str(ROOT / "choose.py"), *choose_args(shared, "20", *ONE_SEED)]
    logs = [tmp_path / f"worker{i}.txt" for i in range(2)]  # files, not pipes: a full pipe would stall its worker
    workers = [subprocess.Popen(command, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT) for log in logs]
    codes = [worker.wait(timeout=900) for worker in workers]
    outputs = [log.read_text() for log in logs]
    assert codes == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    table, answer = race_decisions(shared)
    expected_table, expected_answer = race_decisions(lone_choose)
    pd.testing.assert_frame_equal(table, expected_table)
    assert answer == expected_answer
    # what was trained, from the lone worker's race table: a pair with a score at a rung trained to its epochs
    expected = collections.Counter()
    for row in expected_table.itertuples():
        for column in expected_table.columns:
            found = re.fullmatch(r"val_top1_rung\d+_(\d+)ep", column)
            if found and not pd.isna(getattr(row, column)):
                expected[f"training {row.backbone} lr {row.lr:g} to {found[1]} epoch(s)"] += 1
    finalists = expected_table[expected_table["finalist"]]
    expected.update(f"Confirming {row.backbone} at lr {row.lr:g}, seed 0" for row in finalists.itertuples())
    work = re.compile(r"^\s*(training \S+ lr \S+ to \d+ epoch\(s\)|Confirming \S+ at lr \S+, seed \d+)", re.M)
    done = [work.findall(text) for text in outputs]
    assert collections.Counter(done[0] + done[1]) == expected
    print(f"worker 1 trained {len(done[0])}, worker 2 {len(done[1])} of {sum(expected.values())}")


def test_a_claim_held_by_a_live_process_is_refused_and_passes_on_when_it_dies(tmp_path):
    lock = tmp_path / "pair.lock"
    holder = "import sys; from filelock import FileLock; lock = FileLock(sys.argv[1]); lock.acquire(); "
    holder += "print('held', flush=True); sys.stdin.read()"  # holds the lock until killed
    process = subprocess.Popen([sys.executable, "-c", holder, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert process.stdout.readline() == b"held\n"
        with claim(lock) as mine:
            assert not mine
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    with claim(lock) as mine:  # the dead holder's lock was released by the system, its file left behind
        assert mine and lock.exists()


def test_a_lock_file_that_is_a_symbolic_link_is_refused_and_its_target_kept(tmp_path):
    argv = choose_args(tmp_path / "choose", "40")
    own, _, run_flags = choose.parse_args(argv)
    choose.open_folder(own, run_flags)
    victim = tmp_path / "mine.txt"
    victim.write_text("mine")
    own.folder.lock.unlink(missing_ok=True)
    own.folder.lock.symlink_to(victim)  # a crafted folder: its lock points at a file of the user's
    result = run_inline("choose.py", *argv)
    assert_clean_error(result, "choose.lock is a symbolic link, not a lock file this tool made")
    assert victim.read_text() == "mine" and not own.folder.ranking.exists()
    claimed = tmp_path / "pair.lock"
    claimed.symlink_to(victim)
    with pytest.raises(UserError, match="pair.lock is a symbolic link"), claim(claimed):
        pass
    assert victim.read_text() == "mine"


def test_a_dry_run_prints_what_an_epoch_budget_buys(tmp_path):
    # 3 backbones x 3 rates = 9 pairs; the race's half of 60 epochs is 30: 9 x 1 epoch, then the best 3 to 3 epochs
    # (3 x 2 more) = 15; 2 pairs would be left, both finalists. Confirmation: (60 - 15) / (2 finalists x 2 seeds x
    # 2 phases) = 5.6, so 5 epochs per phase
    argv = ["--dataset", "digits", "--budget", "60", "--models", "mobilenet", "shufflenet", "timm:test_resnet"]
    result = run_inline("choose.py", *argv, "--seeds", "0", "1", "--out", tmp_path / "c", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1:3] == [
        "  rung 0: 9 pairs to 1 epoch(s) each (9 epochs)",
        "  rung 1: 3 pairs to 3 epoch(s) each (6 epochs)",
    ]
    assert (
        "Race: 15 epochs of its 30. Confirmation: 2 finalist(s) x 2 seed(s), at most 5 epoch(s) per phase" in lines[3]
    )
    assert not (tmp_path / "c").exists()


def test_a_time_budget_counts_what_the_ranking_already_spent(tmp_path):
    """2 backbones x 2 rates at 5 s an epoch: the race's half pays for 4 x 5 = 20 s from 40 s on. The confirmation,
    2 finalists x 2 seeds x 2 phases x 5 s = 40 s, plus the ranking's 40 s, needs the other half to be 80 s: 160."""
    own, _, _ = choose.parse_args(choose_args(tmp_path / "c", "100s", "--race-share", "0.5"))
    choose.check_minimum(own, pairs=4, per_epoch=5.0, backbones=2)  # 100 s pays for it all without a ranking
    with pytest.raises(UserError, match="after the 40 the ranking and the pricing took. The minimum is 160 seconds"):
        choose.check_minimum(own, pairs=4, per_epoch=5.0, backbones=2, spent=40.0)


def test_a_time_budget_prices_an_epoch_from_timed_training_steps_before_the_race(tmp_path, monkeypatch):
    """An epoch's price: the training split's batches at the timed step's speed, plus the validation images and
    the BatchNorm re-estimation's (every training image, fewer than --bn-images' 2048) at the ranking's speed per
    image. Worked out here from the counts rank.py wrote and the speed the timing returned."""
    rates = []
    timed = choose.bench.images_per_s

    def recorded(*args, **kwargs):
        rates.append(timed(*args, **kwargs))
        return rates[-1]

    monkeypatch.setattr(choose.bench, "images_per_s", recorded)
    monkeypatch.setenv("BACKBONES_CACHE", str(tmp_path / "cache"))  # features extracted here, not read back
    own, spec, run_flags = choose.parse_args(choose_args(tmp_path / "c", "1s"))
    choose.open_folder(own, run_flags)
    ranked = choose.ranking(own, spec, run_flags)
    measured = choose.price_epochs(own, spec, run_flags, list(TINY), ranked)
    assert len(rates) == len(TINY) and measured["seconds"] > 0
    for name, rate in zip(TINY, rates, strict=True):
        row = ranked.loc[name]
        assert not row["features_cached"]
        n_train, n_val = int(row["n_train"]), int(row["n_val"])
        forward = row["features_seconds"] / (n_train + n_val)
        expected = math.ceil(n_train / 64) * 64 / rate + forward * (n_val + n_train)  # both backbones have BN
        assert measured["prices"][name] == pytest.approx(expected, rel=1e-9)
    # where the ranking read its features from the cache it timed no forward pass: a third of a step's, per image
    rates.clear()
    cached = choose.price_epochs(own, spec, run_flags, list(TINY), ranked.assign(features_cached=True))
    for name, rate in zip(TINY, rates, strict=True):
        n_train, n_val = int(ranked.loc[name, "n_train"]), int(ranked.loc[name, "n_val"])
        expected = math.ceil(n_train / 64) * 64 / rate + (1 / rate / 3) * (n_val + n_train)
        assert cached["prices"][name] == pytest.approx(expected, rel=1e-9)
    with pytest.raises(UserError, match=r"The minimum is \d+ seconds \(at the measured price of an epoch\)"):
        choose.main(choose_args(tmp_path / "c", "1s"))  # one second buys nothing: refused before the race


def test_the_sweep_estimate_is_a_lower_bound_where_the_budget_shortened_the_confirmation(tmp_path):
    """The sweep is estimated at the confirmation runs' length: a sweep's runs are as short only where the run
    flags' --max-epochs, not the budget, capped them."""
    unbounded, _, _ = choose.parse_args(choose_args(tmp_path / "a", "40"))
    bounded, _, _ = choose.parse_args(choose_args(tmp_path / "b", "40", "--max-epochs", "4"))
    assert [choose.capped(unbounded, 9), choose.capped(bounded, 2), choose.capped(bounded, 4)] == [True, True, False]


def test_rerunning_with_other_flags_is_refused_and_nothing_is_lost(tmp_path):
    out = tmp_path / "choose"
    out.mkdir()
    (out / "choose.json").write_text(json.dumps({"dataset": "digits", "budget": {"amount": 99, "unit": "epochs"}}))
    result = run_inline("choose.py", *choose_args(out, "40"))
    assert_clean_error(result, "other settings (budget", "a new --out")
    assert sorted(p.name for p in out.iterdir()) == ["choose.json"]


def test_a_damaged_ranking_read_back_is_a_clear_error(tmp_path):
    argv = choose_args(tmp_path / "choose", "40")
    own, _, run_flags = choose.parse_args(argv)
    choose.open_folder(own, run_flags)  # a choose killed after its folder was made
    own.folder.ranking.write_text('backbone,logme\n"timm:test_resnet",not-a-number\n')
    result = run_inline("choose.py", *argv)
    assert_clean_error(
        result,
        "choose's ranking (delete it to rank again)",
        "is not a table rank.py wrote: it lacks the columns dataset_fingerprint",
    )
    assert result.returncode == 2


def test_probe_images_ranks_from_a_sample_and_a_rerun_must_ask_for_the_same(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKBONES_CACHE", str(tmp_path / "cache"))
    argv = choose_args(tmp_path / "choose", "40", "--probe-images", "100")
    own, spec, run_flags = choose.parse_args(argv)
    choose.open_folder(own, run_flags)
    ranked = choose.ranking(own, spec, run_flags)
    assert ranked["probe_images"].tolist() == [100, 100]
    assert (ranked["n_train"] + ranked["n_val"]).tolist() == [1797 - 364] * 2  # the setting: the whole split
    extracted = sorted(len(np.load(p)["labels"]) for p in (tmp_path / "cache" / "features").glob("digits-train-*"))
    assert extracted == [100, 100]  # one sample per backbone, the rest of the training split never extracted
    for other in (["--probe-images", "200"], []):  # another sample, or every image: another ranking
        result = run_inline("choose.py", *choose_args(tmp_path / "choose", "40", *other))
        assert_clean_error(result, "other settings (probe_images)", "a new --out")
    assert sorted(p.name for p in own.out.iterdir()) == ["choose.json", "choose.lock", "ranking.csv"]


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sqlite:///{tmp}/no-such-folder/race.db", "unable to open database file"),
        ("mysql://me@127.0.0.1/race", "lacks the database's driver: install it"),  # no MySQL driver is installed
    ],
)
def test_a_storage_that_cannot_be_opened_is_a_clear_error(tmp_path, url, says):
    with pytest.raises(UserError, match="The race's Optuna storage .* cannot be opened") as refused:
        RaceState(url.format(tmp=tmp_path), "race", [Pair("timm:test_resnet", 1e-3)], "digits")
    assert says in str(refused.value) and "--storage" in str(refused.value)
