"""Fine-tune a backbone on BreakHis. Usage: python breakhis.py -model convnext_tiny -bs 32 (see --help)."""

from backbones.datasets.breakhis import SPEC
from backbones.finetune import run

if __name__ == "__main__":
    run(SPEC)
