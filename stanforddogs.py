"""Fine-tune a backbone on Stanford Dogs. Usage: python stanforddogs.py -model convnext_tiny -bs 32 (see --help)."""

from backbones.datasets.stanforddogs import SPEC
from backbones.finetune import run

if __name__ == "__main__":
    run(SPEC)
