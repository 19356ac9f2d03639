"""Run a grid of fine-tuning runs that survives being killed: see backbones/sweep.py, or python sweep.py --help."""

from backbones.errors import run_cli
from backbones.sweep import main

if __name__ == "__main__":
    run_cli(main)
