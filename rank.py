"""Rank backbones for a dataset from frozen features: see backbones/rank.py, or python rank.py --help."""

from backbones.errors import run_cli
from backbones.rank import main

if __name__ == "__main__":
    run_cli(main)
