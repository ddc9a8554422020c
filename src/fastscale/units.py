"""Units and conventions of the seed papers, in one place for the fit layer, the trainer and the
reports (numpy only: the fit layer stays free of torch).

Compute: Kaplan and Henighan quote C in PF-days (1 PF-day = 1e15 FLOP/s * 86,400 s = 8.64e19 FLOP);
Hoffmann and Porian in FLOPs. Training compute C = 6 N D (forward + backward, non-embedding N).
Loss: nats per token; per image or document multiply by the tokens per item (Henighan Table 3).
"""

from __future__ import annotations

import numpy as np

PF_DAY_FLOPS = 1e15 * 24 * 3600


def flops_to_pf_days(flops):
    return np.asarray(flops, dtype=np.float64) / PF_DAY_FLOPS


def pf_days_to_flops(pf_days):
    return np.asarray(pf_days, dtype=np.float64) * PF_DAY_FLOPS


def training_flops(n_params, n_tokens):
    """C = 6 N D (Kaplan et al. sec. 2.1)."""
    return 6.0 * np.asarray(n_params, dtype=np.float64) * np.asarray(n_tokens, dtype=np.float64)


def tokens_from_flops(flops, n_params):
    """D = C / 6N (how Epoch derive Chinchilla's tokens from its compute)."""
    return np.asarray(flops, dtype=np.float64) / (6.0 * np.asarray(n_params, dtype=np.float64))


def per_item(params: dict, tokens_per_item: float) -> dict:
    """A power law in nats per token, L = L_inf + (x0/x)^alpha, restated in nats per item (image, document):
    L_inf scales by T and x0 by T^(1/alpha), since T (x0/x)^alpha = (x0 T^(1/alpha) / x)^alpha."""
    return {
        "L_inf": params["L_inf"] * tokens_per_item,
        "x0": params["x0"] * tokens_per_item ** (1.0 / params["alpha"]),
        "alpha": params["alpha"],
    }
