"""fastscale: fast, trustworthy scaling-law research on autoregressive transformers.

Importing the package imports nothing else: each subpackage loads its own dependencies, so the command
line starts fast and `fastscale fit` runs without torch."""

import logging

# The one place the version is written: pyproject.toml reads it (dynamic version, without importing
# the package), `fastscale --version` prints it.
__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
