"""The kernel benchmark suite: one module per kernel family on the shared harness (harness.py)."""
