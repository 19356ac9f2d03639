"""Fine-tune a backbone on Describable Textures (DTD). Usage: python dtd.py -model convnext_tiny -bs 32 (see --help)."""

from backbones.datasets.dtd import SPEC
from backbones.finetune import run

if __name__ == "__main__":
    run(SPEC)
