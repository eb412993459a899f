"""Train the reference networks on the ImageNet subsets (ReIN<N>) and write the results table.

Run `python Train_ImageNetRescaleSubsets.py --help` for the flags, or see docs/training.md.
"""

from utils.cli import exit_with
from utils.training import main

if __name__ == "__main__":
    exit_with(lambda argv: main(argv, dataset="ImageNet"))
