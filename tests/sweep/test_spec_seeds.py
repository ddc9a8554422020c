"""Seeds per model size: more seeds where runs are cheap, run names as with one list of seeds."""

import pytest

from fastscale.sweep import PRESETS, SweepError, SweepSpec

BASE = {
    "data": {"dataset": "digits"}, "seq_len": 193, "sizes": [1e4, 3e3, 3e4], "tokens": [3e4, 1e4],
    "deepspeed": {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 2},
}


def test_one_list_per_size_gives_each_size_its_seeds_at_every_budget():
    runs = SweepSpec.from_dict({**BASE, "seeds": [[0], [0, 1, 2], [0]]}).runs()
    names = [r.name for r in runs]
    # sizes are listed 1e4, 3e3, 3e4: the three seeds belong to 3e3, whatever order the grid runs in
    assert names == ["N3e03_t3e04_s0", "N3e03_t3e04_s1", "N3e03_t3e04_s2", "N3e03_t1e04_s0", "N3e03_t1e04_s1", "N3e03_t1e04_s2",
                     "N1e04_t3e04_s0", "N1e04_t1e04_s0", "N3e04_t3e04_s0", "N3e04_t1e04_s0"]
    assert [r.seed for r in runs if r.n_target == 3e3] == [0, 1, 2, 0, 1, 2]


def test_a_single_list_keeps_the_names_of_earlier_sweeps():
    flat = [r.name for r in SweepSpec.from_dict({**BASE, "seeds": [0, 1]}).runs()]
    nested = [r.name for r in SweepSpec.from_dict({**BASE, "seeds": [[0, 1]] * 3}).runs()]
    assert flat == nested and len(flat) == 12


@pytest.mark.parametrize("seeds, message", [
    ([[0], [0, 1]], r"one list of integers >= 0 per size \(3 lists\)"),
    ([[0], [], [0]], "one list of integers"),
    ([0, [1]], "a non-empty list of integers >= 0, or one such list per size"),
    ([[0], [-1], [0]], "one list of integers"),
    ([[0], [1, 1], [0]], "distinct runs"),
])
def test_bad_seed_lists_are_refused_with_the_value(seeds, message):
    with pytest.raises(SweepError, match=message):
        SweepSpec.from_dict({**BASE, "seeds": seeds}).runs()


def test_image8_trains_two_seeds_at_its_three_smallest_sizes():
    spec = SweepSpec.from_dict(PRESETS["image8"])
    seeds = {}
    for run in spec.runs():
        seeds.setdefault(run.n_target, set()).add(run.seed)
    smallest = sorted(seeds)[:3]
    assert all(seeds[n] == {0, 1} for n in smallest) and all(seeds[n] == {0} for n in sorted(seeds)[3:])
