"""Choose a backbone within a budget (rank, race, confirm): see backbones/choose.py, or python choose.py --help."""

from backbones.choose import main
from backbones.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
