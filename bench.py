"""Measure where a run's time goes: see backbones/bench.py, or python bench.py --help."""

from backbones.bench import main
from backbones.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
