"""ucmerced.py under the original's file name: python ucmercedlanduse.py -model convnext_tiny -bs 32 runs the same."""

from backbones import finetune
from backbones.datasets.ucmerced import SPEC

if __name__ == "__main__":
    finetune.run(SPEC)
