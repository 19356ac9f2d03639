"""Robustness and invariance of finished runs: see backbones/robustness.py, or python robustness.py --help."""

from backbones.errors import run_cli
from backbones.robustness import main

if __name__ == "__main__":
    run_cli(main)
