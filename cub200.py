"""Fine-tune a backbone on CUB-200-2011. Usage: python cub200.py -model convnext_tiny -bs 32 (see --help)."""

from backbones.datasets.cub200 import SPEC
from backbones.finetune import run

if __name__ == "__main__":
    run(SPEC)
