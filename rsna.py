"""Fine-tune a backbone on RSNA Pneumonia Detection. Usage: python rsna.py -model convnext_tiny -bs 32 (see --help)."""

from backbones.datasets.rsna import SPEC
from backbones.finetune import run

if __name__ == "__main__":
    run(SPEC)
