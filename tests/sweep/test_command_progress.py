"""`fastscale sweep`'s progress bars (sweep.command.SweepProgress), driven through run_sweep's callbacks
by hand and read from the bars' state: lines that never overlap, token counts and ETA, resume."""

import io
import random
from collections import namedtuple

import pytest
from tqdm import tqdm

from fastscale.sweep.command import SweepProgress

Run = namedtuple("Run", "name tokens")


class Bar(tqdm):
    """tqdm writing to a buffer, counting its redraws."""

    def __init__(self, *args, **kwargs):
        self.redraws = 0
        super().__init__(*args, file=io.StringIO(), **kwargs)

    def refresh(self, *args, **kwargs):
        self.redraws += 1
        return super().refresh(*args, **kwargs)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def runs():
    return [Run(f"r{k}", float(random.randrange(10_000, 1_000_000))) for k in range(4)]


@pytest.fixture
def progress(runs):
    progress = SweepProgress(runs, "test", bar=Bar, clock=Clock())
    yield progress
    progress.close()


def line_of(bar) -> int:
    return -bar.pos  # tqdm stores an explicit position negated


def test_running_runs_get_lines_of_their_own_and_a_finished_runs_line_is_reused(progress, runs):
    progress.start("2 at a time", {})
    a, b, c, d = (run.name for run in runs)
    for name in (a, b):
        progress.update(name, "running")
        progress.step(name, 0, 50)
    assert (line_of(progress.bars[a]), line_of(progress.bars[b])) == (1, 2)
    assert line_of(progress.sweep) == 0
    progress.update(a, "done")
    progress.update(c, "running")
    progress.step(c, 3, 50)
    progress.update(d, "running")
    progress.step(d, 0, 50)
    assert {name: line_of(bar) for name, bar in progress.bars.items()} == {b: 2, c: 1, d: 3}
    progress.update(c, "trained")  # its study evaluation next, on a line of its own again
    progress.update(c, "evaluating")
    assert line_of(progress.bars[c]) == 1


def test_the_sweep_counts_tokens_and_its_eta_is_the_tokens_left_at_this_invocations_rate(progress, runs):
    progress.start("1 at a time", {})
    first, *_ = runs
    total = sum(run.tokens for run in runs)
    assert progress.sweep.total == total and progress.sweep.n == 0
    progress.update(first.name, "running")
    progress.step(first.name, 0, 100)
    progress.step(first.name, 30, 100)
    assert progress.sweep.n == pytest.approx(0.3 * first.tokens)
    elapsed = random.uniform(5, 500)
    rate = 0.3 * first.tokens / elapsed
    shown = tqdm.format_meter(**{**progress.sweep.format_dict, "elapsed": elapsed})
    assert tqdm.format_interval((total - 0.3 * first.tokens) / rate) in shown
    assert "0/4 runs done, 1 running" in shown


def test_on_resume_earlier_work_counts_as_done_and_not_in_the_rates(progress, runs):
    done, trained, resumed, fresh = runs
    progress.start("2 at a time", {done.name: "done", trained.name: "trained", resumed.name: "failed"})
    assert progress.sweep.initial == progress.sweep.n == done.tokens + trained.tokens
    assert progress.summary() == "1/4 runs done"
    progress.update(resumed.name, "running")
    progress.step(resumed.name, 40, 100)  # its first poll: continued from its checkpoint at step 40
    bar = progress.bars[resumed.name]
    assert (bar.initial, bar.n, bar.total) == (40, 40, 100)
    assert progress.sweep.initial == pytest.approx(done.tokens + trained.tokens + 0.4 * resumed.tokens)
    progress.step(resumed.name, 47, 100)
    assert bar.n - bar.initial == 7  # the rate counts the 7 steps of this process only
    assert progress.sweep.n - progress.sweep.initial == pytest.approx(0.07 * resumed.tokens)
    for name, states in ((trained.name, ("evaluating", "done")), (resumed.name, ("done",)), (fresh.name, ("running", "done"))):
        for state in states:
            progress.update(name, state)
    assert progress.summary() == "4/4 runs done"
    assert progress.sweep.n == pytest.approx(progress.sweep.total)


def test_a_retrained_run_is_no_longer_counted_as_done(progress, runs):
    again = runs[0]
    progress.start("1 at a time", {again.name: "done"})
    progress.update(again.name, "running")
    assert progress.summary() == "0/4 runs done"
    assert progress.sweep.initial == progress.sweep.n == 0
    progress.step(again.name, 10, 20)
    progress.update(again.name, "failed")
    assert "1 failed" in str(progress.sweep)


def test_step_polls_redraw_every_bar_once_a_second_so_elapsed_times_run_on(progress, runs):
    progress.start("1 at a time", {})
    name = runs[0].name
    progress.update(name, "running")  # an event redraws at once
    progress.step(name, 1, 10)
    sweep_redraws = progress.sweep.redraws
    clock = progress.clock
    for now in (0.3, 0.6, 0.9):
        clock.now = now
        progress.step(name, 1, 10)
    assert progress.sweep.redraws == sweep_redraws
    clock.now = 1.2
    progress.step(name, 1, 10)
    assert progress.sweep.redraws == sweep_redraws + 1
    assert progress.bars[name].redraws >= 1
