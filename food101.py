"""Fine-tune a backbone on Food-101. Usage: python food101.py -model convnext_tiny -bs 32 (see --help)."""

from backbones.datasets.food101 import SPEC
from backbones.finetune import run

if __name__ == "__main__":
    run(SPEC)
