"""Fine-tune a backbone on EuroSAT. Usage: python eurosat.py -model convnext_tiny -bs 32 (see --help)."""

from backbones.datasets.eurosat import SPEC
from backbones.finetune import run

if __name__ == "__main__":
    run(SPEC)
