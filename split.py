"""Split a folder of class subfolders into train/test (and val): see backbones/split.py, or python split.py --help."""

from backbones.errors import run_cli
from backbones.split import main

if __name__ == "__main__":
    run_cli(main)
