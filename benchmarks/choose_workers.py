"""choose.py run by one worker, then by several sharing one folder, on the same data: the wall time, the work each
worker took and whether they decided alike. A benchmark that prints figures, not a test.

Usage: python benchmarks/choose_workers.py --out bench/workers [--workers 2] [--threads 1] -- --dataset digits
           --budget 60 --models ... -bs 64 --weights none --workers 0       (choose.py's flags, without --out)

Each configuration starts from its own empty BACKBONES_CACHE (features and decoded images), so neither reuses the
other's work, and each worker computes with --threads threads (OMP_NUM_THREADS), as machines of one size would.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
WORK = re.compile(r"^\s*(training \S+ lr \S+ to \d+ epoch\(s\)|Confirming \S+ at lr \S+, seed \d+)", re.M)


def run(folder: Path, workers: int, threads: int, choose_flags: list[str]) -> dict:
    """Start `workers` choose processes on `folder` together; their wall time, work and answer."""
    cache = folder.parent / f"{folder.name}-cache"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "BACKBONES_CACHE": str(cache)}
    command = [sys.executable, str(ROOT / "choose.py"), *choose_flags, "--out", str(folder / "choose")]
    folder.mkdir(parents=True)
    logs = [folder / f"worker{i}.log" for i in range(workers)]
    started = time.perf_counter()
    processes = [
        subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT) for log in logs
    ]
    codes = [process.wait() for process in processes]
    wall = time.perf_counter() - started
    if any(codes):
        sys.exit(f"a worker failed (exit codes {codes}); see {', '.join(map(str, logs))}")
    answer = json.loads((folder / "choose" / "answer.json").read_text())
    race = pd.read_csv(folder / "choose" / "race.csv").drop(columns=["seconds"])
    tasks = [len(WORK.findall(log.read_text())) for log in logs]
    return {"wall": wall, "tasks": tasks, "answer": answer, "race": race}


def main() -> None:
    argv = sys.argv[1:]
    own, choose_flags = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="a new folder for both configurations")
    parser.add_argument("--workers", type=int, default=2, help="workers of the shared configuration (default: 2)")
    parser.add_argument("--threads", type=int, default=1, help="threads of each worker (default: 1)")
    args = parser.parse_args(own)
    if args.out.exists():
        parser.error(f"--out {args.out} exists: timings need a fresh folder")
    lone = run(args.out / "1-worker", 1, args.threads, choose_flags)
    shared = run(args.out / f"{args.workers}-workers", args.workers, args.threads, choose_flags)
    same = lone["race"].equals(shared["race"]) and all(
        lone["answer"][key] == shared["answer"][key] for key in ("best", "tied", "pick", "pick_lr", "epochs")
    )
    print("\n| workers | wall (s) | trainings per worker | pick | compute (s) |\n|---|---|---|---|---|")
    for count, result in ((1, lone), (args.workers, shared)):
        answer = result["answer"]
        print(f"| {count} | {result['wall']:.0f} | {' / '.join(map(str, result['tasks']))} | {answer['pick']} "
              f"(lr {answer['pick_lr']:g}) | {answer['seconds']:.0f} |")  # fmt: skip
    print(f"\nSpeed-up {lone['wall'] / shared['wall']:.2f}x with {args.workers} workers of {args.threads} thread(s); "
          f"the same race and answer: {'yes' if same else 'NO'}.")  # fmt: skip


if __name__ == "__main__":
    main()
