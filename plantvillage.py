"""Fine-tune a backbone on PlantVillage. Usage: python plantvillage.py -model convnext_tiny -bs 32 (see --help)."""

from backbones.datasets.plantvillage import SPEC
from backbones.finetune import run

if __name__ == "__main__":
    run(SPEC)
