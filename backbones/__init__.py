"""backbones: which ImageNet-pretrained backbone to fine-tune on a small image dataset, and what it costs.

The library behind the top-level scripts (`python <dataset>.py`, `report.py`, ...) and the `backbones` command.
"""
