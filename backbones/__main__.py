"""`python -m backbones <command> ...`: the same as the `backbones` command."""

from backbones.cli import main

main()
