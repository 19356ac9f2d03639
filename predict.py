"""Classify new images with a finished run's model: see backbones/predict.py, or python predict.py --help."""

from backbones.errors import run_cli
from backbones.predict import main

if __name__ == "__main__":
    run_cli(main)
