"""What choose.py answers against the full sweep it replaces, on the same data with the same run flags. A benchmark
that prints figures, not a test.

Usage: python benchmarks/choose_vs_sweep.py --dataset digits --out bench/choose [--models all] [--seeds 0 1 2]
           [--share 0.25 | --budget B] [--budget-in epochs] [--keep 4] -- -bs 64 --weights none --max-epochs 3
           --patience 2 --workers 0

  sweep     every backbone x every seed, fine-tuned by sweep.py at the default learning rate, then ranked with the
            report's tie statistics: its best and the set tied with it
  choose    choose.py with --budget = share x the epochs the sweep trained (rank, race, confirm), or with
            --budget-in seconds, share x the seconds it trained (a time budget, as `--budget 4h` gives one)
  ratio     choose / sweep, in training seconds (both count the seconds spent training and selecting, as each
            run's train_seconds does, plus the ranking's for choose) and in training images seen

Both are resumable: run the command again and finished runs are kept.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backbones import choose, models, report, sweep  # noqa: E402
from backbones.errors import run_cli  # noqa: E402
from backbones.runtable import finished_runs, runs_table  # noqa: E402


def main() -> None:
    argv = sys.argv[1:]
    own, run_flags = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="the dataset script's name")
    parser.add_argument("--out", type=Path, required=True, help="folder for the sweep and the choose")
    parser.add_argument("--models", nargs="+", default=["all"], help="candidates (default: the eleven)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds of both (default: 0 1 2)")
    parser.add_argument("--share", type=float, default=0.25, help="choose's budget as a share of the sweep's")
    parser.add_argument("--budget-in", choices=["epochs", "seconds"], default="epochs",
                        help="what choose's budget counts: the sweep's epochs, or its training seconds (a time "
                        "budget; choose's folder is then choose-seconds) (default: epochs)")  # fmt: skip
    parser.add_argument("--budget", default=None,
                        help="choose's budget as choose.py takes it (100, 300s), in place of --share's; where the "
                        "share is below the minimum choose refuses, this gives it that minimum")  # fmt: skip
    parser.add_argument("--keep", type=int, default=None, help="choose's --keep (default: race every candidate)")
    parser.add_argument("--choose-flags", nargs=argparse.REMAINDER, default=[], help="further flags for choose.py")
    args = parser.parse_args(own)
    names = models.resolve_names(args.models)
    seeds = [str(seed) for seed in args.seeds]

    started = time.perf_counter()
    sweep.main(["--models", *names, "--datasets", args.dataset, "--seeds", *seeds, "--out", str(args.out / "sweep"),
                "--", *run_flags])  # fmt: skip
    sweep_wall = time.perf_counter() - started
    runs, _ = finished_runs([args.out / "sweep"])
    board = report.leaderboard(runs_table(runs)[0], seed=args.seeds[0])
    sweep_epochs = sum(len(run["history"]) for run in runs)
    sweep_seconds = sum(run["train_seconds"] for run in runs)
    n_train = runs[0]["n_train"]

    if args.budget_in == "epochs":
        budget, folder = str(math.floor(args.share * sweep_epochs)), "choose"
    else:
        budget, folder = f"{math.floor(args.share * sweep_seconds)}s", "choose-seconds"
    budget = args.budget or budget
    started = time.perf_counter()
    command = ["--dataset", args.dataset, "--budget", budget, "--models", *names, "--seeds", *seeds,
               "--out", str(args.out / folder), *(["--keep", str(args.keep)] if args.keep else []),
               *args.choose_flags, *run_flags]  # fmt: skip
    result = choose.main(command)
    choose_wall = time.perf_counter() - started

    tied = board.loc[board["tied_with_best"], "backbone"].tolist()
    figures = {
        "dataset": args.dataset,
        "backbones": len(names),
        "seeds": len(seeds),
        "run_flags": " ".join(run_flags),
        "sweep_best": board["backbone"].iloc[0],
        "sweep_tied": tied,
        "choose_pick": result["pick"],
        "choose_pick_lr": result["pick_lr"],
        "pick_in_sweep_tied_set": result["pick"] in tied,
        "sweep_epochs": sweep_epochs,
        "choose_budget": budget,
        "choose_epochs": result["epochs"],
        "sweep_train_seconds": round(sweep_seconds, 1),
        "choose_seconds": result["seconds"],
        "ratio_seconds": round(result["seconds"] / sweep_seconds, 3),
        "sweep_training_images": sweep_epochs * n_train,
        "choose_training_images": result["training_images"],
        "ratio_images": round(result["training_images"] / (sweep_epochs * n_train), 3),
        "sweep_wall_seconds_this_call": round(sweep_wall, 1),
        "choose_wall_seconds_this_call": round(choose_wall, 1),
    }
    print("\n" + "\n".join(f"{key:32s} {value}" for key, value in figures.items()))
    (args.out / f"figures-{folder}.json").write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    run_cli(main)
