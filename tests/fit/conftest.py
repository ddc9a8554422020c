"""Fixtures for the fit tests: the published data in ../shared/data/scaling (skipped when absent)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

SCALING_DATA = Path(__file__).parents[2] / ".." / "shared" / "data" / "scaling"


def data_folder(name: str) -> Path:
    folder = SCALING_DATA / name
    if not folder.is_dir():
        pytest.skip(f"published scaling data not found at {folder.resolve()} (a fresh clone has no ../shared)")
    return folder


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="session")
def epoch_csv() -> Path:
    return data_folder("chinchilla-epoch") / "svg_extracted_data.csv"


@pytest.fixture(scope="session")
def epoch_chinchilla(epoch_csv):
    """Epoch AI's 245 Chinchilla points minus the 5 highest losses (their protocol): N, D = C/6N, loss."""
    rows = read_csv(epoch_csv)
    n = np.array([float(r["Model Size"]) for r in rows])
    c = np.array([float(r["Training FLOP"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    keep = loss < np.sort(loss)[-5]
    return n[keep], c[keep] / (6 * n[keep]), loss[keep]


@pytest.fixture(scope="session")
def epoch_chinchilla_fit(epoch_chinchilla):
    from fastscale.fit import fit_chinchilla

    return fit_chinchilla(*epoch_chinchilla, n_bootstrap=200, seed=0)


@pytest.fixture(scope="session")
def porian_folder() -> Path:
    return data_folder("porian2024")


@pytest.fixture(scope="session")
def porian(porian_folder):
    """Porian et al. 2024: (published fits, optimal pairs rows, IsoFLOP point rows)."""
    folder = porian_folder
    published = json.loads((folder / "published_fits.json").read_text())
    return published, read_csv(folder / "optimal_pairs.csv"), read_csv(folder / "isoflop_points.csv")


@pytest.fixture(scope="session")
def published_constants():
    return json.loads((data_folder("published-constants") / "constants.json").read_text())
