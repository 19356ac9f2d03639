"""Fine-tune a backbone on Tiny ImageNet. Usage: python tinyimagenet.py -model convnext_tiny -bs 32 (see --help)."""

from backbones.datasets.tinyimagenet import SPEC
from backbones.finetune import run

if __name__ == "__main__":
    run(SPEC)
