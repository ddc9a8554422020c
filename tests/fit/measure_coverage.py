"""Measure how often the bootstrap intervals cover the truth on synthetic data (not a test: it takes minutes).

    nice python tests/fit/measure_coverage.py LAW SEEDS RESAMPLES     LAW: power allocation critical kaplan chinchilla

The rates quoted in the tests' comments were measured with this script.
"""

import sys
import time

import numpy as np

from fastscale.fit import KaplanNDFit, fit_allocation, fit_chinchilla, fit_critical_batch, fit_kaplan_nd, fit_power_law


def synthetic_fit(law, rng, n_bootstrap, seed):
    """(fit, truth) for one seed of the law's synthetic data."""
    if law == "power":
        x = np.logspace(5, 9, 10)
        y = (2 + (3e4 / x) ** 0.25) * np.exp(rng.normal(0, 0.01, 10))
        return fit_power_law(x, y, n_bootstrap=n_bootstrap, seed=seed), {"L_inf": 2.0, "alpha": 0.25, "x0": 3e4}
    if law == "allocation":
        c = np.logspace(17, 21, 12)
        n_opt = (c / 1e-3) ** 0.55 * np.exp(rng.normal(0, 0.05, 12))
        return fit_allocation(c, n_opt, n_bootstrap=n_bootstrap, seed=seed), {"a": 0.55, "C0": 1e-3}
    if law == "critical":
        batch = np.geomspace(64, 65536, 11)
        steps = 2000 * (1 + 2000 / batch) * np.exp(rng.normal(0, 0.02, 11))
        return fit_critical_batch(steps, steps * batch, n_bootstrap=n_bootstrap, seed=seed), {"B_crit": 2000.0, "S_min": 2000.0}
    if law == "kaplan":
        truth = {"Nc": 6.4e13, "Dc": 1.8e13, "alpha_N": 0.076, "alpha_D": 0.103}
        n, d = np.exp(rng.uniform(np.log(1e6), np.log(1e9), 60)), np.exp(rng.uniform(np.log(2e7), np.log(2e10), 60))
        loss = KaplanNDFit._law(truth, n, d) * np.exp(rng.normal(0, 0.01, 60))
        return fit_kaplan_nd(n, d, loss, n_bootstrap=n_bootstrap, seed=seed), truth
    if law == "chinchilla":
        truth = {"E": 1.7, "A": 400.0, "B": 1500.0, "alpha": 0.33, "beta": 0.30}
        n, d = np.exp(rng.uniform(np.log(5e7), np.log(2e10), 200)), np.exp(rng.uniform(np.log(5e9), np.log(5e11), 200))
        loss = (1.7 + 400 / n**0.33 + 1500 / d**0.30) * np.exp(rng.normal(0, 0.01, 200))
        return fit_chinchilla(n, d, loss, n_bootstrap=n_bootstrap, seed=seed), truth
    raise SystemExit(f"LAW={law!r}: expected power, allocation, critical, kaplan or chinchilla")


def main(law: str, seeds: int, n_bootstrap: int) -> None:
    start, covered, flagged = time.time(), {}, 0
    for seed in range(seeds):
        fit, truth = synthetic_fit(law, np.random.default_rng(1000 + seed), n_bootstrap, seed)
        flagged += bool(fit.flags)
        for name, value in truth.items():
            low, high = fit.intervals[name]
            covered.setdefault(name, []).append(low <= value <= high)
    rates = {name: f"{np.mean(hits):.0%}" for name, hits in covered.items()}
    print(f"{law}: {seeds} seeds, {n_bootstrap} resamples, coverage {rates}, flagged fits {flagged}, {time.time() - start:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
