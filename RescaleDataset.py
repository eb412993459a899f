"""Rescale a large image dataset into small, hard subsets.

Runs a pretrained network over the validation split, measures per-class accuracy and confusions,
keeps the classes the network gets wrong most together with the classes they are confused with,
writes the class lists and reports, and builds each subset as an ImageFolder tree.
Settings live in config_rescale.py; `python RescaleDataset.py --help` lists the flags.
"""

from utils.cli import exit_with
from utils.rescale import main

if __name__ == "__main__":
    exit_with(main)
