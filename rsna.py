"""Fine-tune a backbone on RSNA Pneumonia Detection. Usage: python rsna.py -model convnext_tiny -bs 32 (see --help)."""

from datasets.rsna import SPEC
from finetune import run

if __name__ == "__main__":
    run(SPEC)
