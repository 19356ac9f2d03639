"""Fine-tune a backbone on Galaxy10 DECals. Usage: python galaxy10.py -model convnext_tiny -bs 32 (see --help)."""

from backbones.datasets.galaxy10 import SPEC
from backbones.finetune import run

if __name__ == "__main__":
    run(SPEC)
