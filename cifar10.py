"""Fine-tune a backbone on CIFAR-10. Usage: python cifar10.py -model convnext_tiny -bs 32 (see --help)."""

from backbones.datasets.cifar10 import SPEC
from backbones.finetune import run

if __name__ == "__main__":
    run(SPEC)
