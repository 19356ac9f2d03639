"""Fine-tune a backbone on Stanford Cars. Usage: python stanfordcars.py -model convnext_tiny -bs 32 (see --help)."""

from backbones.datasets.stanfordcars import SPEC
from backbones.finetune import run

if __name__ == "__main__":
    run(SPEC)
