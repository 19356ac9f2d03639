"""Compare finished runs: see backbones/report.py, or python report.py --help."""

from backbones.errors import run_cli
from backbones.report import main

if __name__ == "__main__":
    run_cli(main)
