"""Fine-tune a backbone on Oxford Flowers-102. Usage: python flowers102.py -model convnext_tiny -bs 32 (see --help)."""

from backbones.datasets.flowers102 import SPEC
from backbones.finetune import run

if __name__ == "__main__":
    run(SPEC)
