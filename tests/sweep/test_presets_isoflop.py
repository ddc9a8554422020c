"""The isoflop preset is a grid the report can draw IsoFLOP profiles from, each run within 1% of its budget."""

from collections import defaultdict

from fastscale.fit.allocation import MIN_BUDGETS, MIN_POINTS_PER_BUDGET
from fastscale.model import GPTConfig
from fastscale.sweep import SweepSpec


def test_isoflop_preset_has_enough_budgets_and_distinct_shapes_per_budget():
    spec = SweepSpec.load("isoflop")
    assert spec.budget_kind == "compute"
    shapes = defaultdict(set)
    for run in spec.runs():
        shape = GPTConfig.from_params(run.n_target, 257, spec.seq_len, **spec.model)
        counted = shape.flops_per_token() * run.steps * spec.tokens_per_step()  # the trainer's count
        assert abs(counted / run.compute - 1) <= 0.01, run.name
        assert run.steps >= 50, run.name  # more than the 20 warmup steps, and C within 1% by construction
        shapes[run.compute].add((shape.n_layer, shape.d_model))
    assert len(shapes) >= MIN_BUDGETS
    # >= 4 distinct built shapes per budget: a parabola needs 3, and the minimum must have a size on each side
    assert all(len(s) >= max(4, MIN_POINTS_PER_BUDGET) for s in shapes.values()), shapes
