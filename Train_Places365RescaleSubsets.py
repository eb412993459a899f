"""Train the reference networks on the Places365 subsets (RePL<N>) and write the results table.

Run `python Train_Places365RescaleSubsets.py --help` for the flags, or see docs/training.md.
"""

from utils.cli import exit_with
from utils.training import main

if __name__ == "__main__":
    exit_with(lambda argv: main(argv, dataset="Places365"))
