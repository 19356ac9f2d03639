"""What rank.py --probe-images saves and what it changes: a full ranking, then one from each sample size, on the same
data, each from an empty feature cache. A benchmark that prints figures, not a test.

Usage: python benchmarks/rank_probe.py --out bench/probe --sizes 300 150 -- --dataset digits --weights none
           --workers 0                                   (rank.py's flags, without --out and --probe-images)

For each size: the ranking's seconds (extraction and scores, as rank.py times them), their share of the full
ranking's, and each score's Kendall tau against the full ranking's order of the same backbones.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
from scipy.stats import kendalltau

ROOT = Path(__file__).resolve().parents[1]
SCORES = ("logme", "knn", "linear")


def ranking(out: Path, size: int | None, rank_flags: list[str]) -> pd.DataFrame:
    """rank.py's table for one sample size (None: every training image), from an empty cache of its own."""
    name = f"probe-{size}" if size else "full"
    env = {**os.environ, "BACKBONES_CACHE": str(out / f"{name}-cache")}
    sample = ["--probe-images", str(size)] if size else []
    command = [sys.executable, str(ROOT / "rank.py"), *rank_flags, *sample, "--out", str(out / f"{name}.csv")]
    subprocess.run(command, cwd=ROOT, env=env, check=True)
    return pd.read_csv(out / f"{name}.csv").set_index("backbone")


def main() -> None:
    argv = sys.argv[1:]
    own, rank_flags = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="a new folder for the rankings and their caches")
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 150], help="sample sizes (default: 300 150)")
    args = parser.parse_args(own)
    if args.out.exists():
        parser.error(f"--out {args.out} exists: timings need empty caches")
    args.out.mkdir(parents=True)
    full = ranking(args.out, None, rank_flags)
    seconds = (full["features_seconds"] + full["score_seconds"]).sum()
    print(f"\n| training images | seconds | share of the full ranking's | Kendall tau against the full ranking: "
          f"{', '.join(SCORES)} |\n|---|---|---|---|")  # fmt: skip
    print(f"| all {full['n_train'].iloc[0]} | {seconds:.0f} | 1.00 | 1, 1, 1 |")
    for size in args.sizes:
        sampled = ranking(args.out, size, rank_flags).reindex(full.index)
        spent = (sampled["features_seconds"] + sampled["score_seconds"]).sum()
        taus = [kendalltau(full[score], sampled[score]).statistic for score in SCORES]
        print(f"| {size} | {spent:.0f} | {spent / seconds:.2f} | {', '.join(f'{tau:+.2f}' for tau in taus)} |")


if __name__ == "__main__":
    main()
