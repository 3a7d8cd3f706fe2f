"""The training dataset: packing (pack.py) and the PyTorch loader (loader.py)."""
