"""Fine-tune a backbone on PlantCLEF. Usage: python plantclef.py -model convnext_tiny -bs 32 (see --help)."""

from backbones.datasets.plantclef import SPEC
from backbones.finetune import run

if __name__ == "__main__":
    run(SPEC)
