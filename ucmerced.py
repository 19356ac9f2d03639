"""Fine-tune a backbone on UC Merced Land Use. Usage: python ucmerced.py -model convnext_tiny -bs 32 (see --help)."""

from backbones.datasets.ucmerced import SPEC
from backbones.finetune import run

if __name__ == "__main__":
    run(SPEC)
