"""Fine-tune a backbone on your own folder of images. Usage: python imagefolder.py -model convnext_tiny --data DIR."""

from datasets.imagefolder import SPEC
from finetune import run

if __name__ == "__main__":
    run(SPEC)
