"""fastscale: fast, trustworthy scaling-law research on autoregressive transformers."""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
