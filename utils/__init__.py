"""Library code behind RescaleDataset.py and the training scripts."""
