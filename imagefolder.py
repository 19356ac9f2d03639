"""Fine-tune a backbone on your own folder of images. Usage: python imagefolder.py -model convnext_tiny --data DIR."""

from backbones.datasets.imagefolder import SPEC
from backbones.finetune import run

if __name__ == "__main__":
    run(SPEC)
