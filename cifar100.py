"""Fine-tune a backbone on CIFAR-100. Usage: python cifar100.py -model convnext_tiny -bs 32 (see --help)."""

from backbones.datasets.cifar100 import SPEC
from backbones.finetune import run

if __name__ == "__main__":
    run(SPEC)
