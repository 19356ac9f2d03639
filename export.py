"""Export a finished run's model as ONNX, TorchScript or safetensors, verified: see backbones/export.py, or
python export.py --help."""

from backbones.errors import run_cli
from backbones.export import main

if __name__ == "__main__":
    run_cli(main)
