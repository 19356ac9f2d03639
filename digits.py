"""Fine-tune a backbone on Digits (scikit-learn). Usage: python digits.py -model convnext_tiny -bs 32 (see --help)."""

from backbones.datasets.digits import SPEC
from backbones.finetune import run

if __name__ == "__main__":
    run(SPEC)
