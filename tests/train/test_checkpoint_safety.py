"""A run directory is data, never code, and its checkpoints survive damage: real DeepSpeed checkpoints
of a tiny GPT (train.py, one process, ZeRO 1: model states, optimizer shard and RNG files) with a
pickle payload planted in each kind of file (its marker re-hashed, so only the safe load stands in the
way) on --resume, a sweep rerun and a study evaluation; each kind of damage named and the newest intact
checkpoint used, reproducing the uninterrupted curve; a disk that fills during a save.

The reference run is made once per module and copied per test.
"""

import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from fastscale.train import checkpoint as ckpt
from processes import run, training_env

pytest.importorskip("deepspeed")

ROOT = Path(__file__).resolve().parents[2]
STEPS = 10
RUN = {
    "model": {"n_layer": 1, "d_model": 16, "n_head": 2}, "data": {"dataset": "digits"}, "seq_len": 33,
    "train": {"steps": STEPS, "lr": 3e-3, "warmup_steps": 2, "seed": 3, "eval_interval": 5, "eval_batches": 1,
              "checkpoint_interval": 2, "keep_checkpoints": 5, "noise_scale_interval": 0},
}
DS = {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 1}, "steps_per_print": 10**9}
MODEL_STATES, OPTIMIZER_STATES, RNG = "mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt", "rng_rank0.pt"
CURVE_KEYS = ("loss", "lr", "tokens", "grad_norm", "eval_loss")


def train(out: Path, *extra, check=True):
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.parent / "run.json").write_text(json.dumps(RUN))
    (out.parent / "ds.json").write_text(json.dumps(DS))
    command = [sys.executable, str(ROOT / "train.py"), "--config", str(out.parent / "run.json"),
               "--deepspeed_config", str(out.parent / "ds.json"), "--out", str(out), "--no-progress", *extra]
    result = run(command, cwd=ROOT, env=training_env(), capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"train.py failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    train(out)
    return out


@pytest.fixture
def copy(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    return out


def tag_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / ckpt.tag_for(step)


# ------------------------------------------------------------------ payloads
class Payload:
    """Unpickled by a plain torch.load, it runs code: it creates the file `marker`."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('the payload ran')",))


def plant(path: Path, marker: Path) -> None:
    """Add a Payload to a real checkpoint file and re-hash its step's marker, so the file verifies and
    only the safe load can stop it; first proves that a plain load would run it."""
    import torch

    state = torch.load(path, weights_only=False)
    state["payload"] = Payload(marker)
    torch.save(state, path)
    torch.load(path, weights_only=False)
    assert marker.is_file(), "the planted payload does not run under a plain torch.load"
    marker.unlink()
    info = json.loads((path.parent / ckpt.MARKER).read_text())
    info["files"] = ckpt.hash_step(path.parent)
    (path.parent / ckpt.MARKER).write_text(json.dumps(info))


@pytest.mark.slow
@pytest.mark.parametrize("name", [MODEL_STATES, OPTIMIZER_STATES, RNG])
def test_a_planted_pickle_never_runs_on_resume(copy, tmp_path, name):
    path = tag_dir(copy, STEPS) / name
    marker = tmp_path / "payload-ran"
    plant(path, marker)
    before = (copy / "metrics.jsonl").read_bytes()
    result = train(copy, "--resume", check=False)
    assert result.returncode != 0
    assert not marker.exists()
    assert f"{path}: refused to load: it asks for builtins.exec" in result.stderr, result.stderr[-3000:]
    assert (copy / "metrics.jsonl").read_bytes() == before


@pytest.mark.slow
def test_a_planted_pickle_never_runs_in_a_study_evaluation(copy, tmp_path):
    from fastscale.sweep.evaluation import load_trained

    path = tag_dir(copy, STEPS) / MODEL_STATES
    marker = tmp_path / "payload-ran"
    plant(path, marker)
    with pytest.raises(ckpt.CheckpointError, match=rf"{path}: refused to load: it asks for builtins.exec"):
        load_trained(copy)
    assert not marker.exists()


@pytest.mark.slow
def test_a_planted_pickle_never_runs_on_a_sweep_rerun(tmp_path):
    """A sweep's run, interrupted (results.json: failed after one attempt) with a payload in its newest
    checkpoint: the rerun resumes it with --resume, which refuses the file; the run is marked failed."""
    from fastscale.sweep import SweepSpec, run_sweep
    from fastscale.sweep.index import ResultsIndex

    spec = SweepSpec.from_dict({
        "name": "one", "data": {"dataset": "digits"}, "seq_len": 33, "tokens_per_item": 32, "sizes": [3e3], "tokens": [1.3e3],
        "seeds": [0], "model": {"head_dim": 8}, "lr": 3e-3,
        "train": {"warmup_steps": 1, "eval_interval": 0, "checkpoint_interval": 5, "noise_scale_interval": 0},
        "deepspeed": {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 1}, "steps_per_print": 10**9},
    })
    out = tmp_path / "sweep"
    index = run_sweep(spec, out, jobs=1)
    (name,) = index.runs
    assert index.state(name) == "done"
    run_dir = out / "runs" / name
    newest = ckpt.newest_intact(run_dir / "checkpoints")[1]
    path = run_dir / "checkpoints" / newest / OPTIMIZER_STATES
    marker = tmp_path / "payload-ran"
    plant(path, marker)
    index = ResultsIndex(out / "results.json")
    index.runs[name].pop("summary", None)
    index.update(name, "failed", returncode=-9)
    index = run_sweep(spec, out, jobs=1)
    assert index.state(name) == "failed" and index.runs[name]["attempts"] == 2
    assert not marker.exists()
    assert f"{path}: refused to load: it asks for builtins.exec" in (run_dir / "train.log").read_text()


def test_deepspeeds_loads_go_through_the_safe_engine_and_other_engines_are_refused():
    from types import SimpleNamespace

    from deepspeed.runtime.checkpoint_engine import FastCheckpointEngine, TorchCheckpointEngine

    engine = SimpleNamespace(checkpoint_engine=TorchCheckpointEngine(None))
    ckpt.install_safe_engine(engine)
    safe = engine.checkpoint_engine
    assert isinstance(safe, ckpt.SafeCheckpointEngine)
    ckpt.install_safe_engine(engine)
    assert engine.checkpoint_engine is safe  # installed once
    asynchronous = SimpleNamespace(checkpoint_engine=FastCheckpointEngine.__new__(FastCheckpointEngine))
    with pytest.raises(ckpt.CheckpointError, match=r"DeepSpeed checkpoint engine FastCheckpointEngine .*checkpoint.writer"):
        ckpt.install_safe_engine(asynchronous)


@pytest.mark.slow
def test_a_file_that_is_not_a_checkpoint_is_named(copy):
    path = tag_dir(copy, STEPS) / RNG
    truncate(path)
    with pytest.raises(ckpt.CheckpointError, match=rf"^{path}: cannot be loaded: "):
        ckpt.safe_load(path)


# ------------------------------------------------------------------ damage
def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_4k(path: Path) -> None:
    data = bytearray(path.read_bytes())
    assert len(data) >= 3 * 4096, "the file is too small to flip 4 KiB in its middle"
    middle = len(data) // 2 - 2048
    data[middle : middle + 4096] = bytes(b ^ 0xFF for b in data[middle : middle + 4096])
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated model states": (lambda d: truncate(d / MODEL_STATES), lambda d: f"{d / MODEL_STATES}: ", "recorded (truncated or overwritten)"),
    "4 KiB flipped in the model states": (lambda d: flip_4k(d / MODEL_STATES), lambda d: f"{d / MODEL_STATES}: ", "SHA-256 differs from the recorded one"),
    "truncated RNG": (lambda d: truncate(d / RNG), lambda d: f"{d / RNG}: ", "recorded (truncated or overwritten)"),
    "missing optimizer states": (lambda d: (d / OPTIMIZER_STATES).unlink(), lambda d: f"{d / OPTIMIZER_STATES}: ", "missing"),
    "an extra file": (lambda d: (d / "notes.pt").write_bytes(b"x"), lambda d: f"{d / 'notes.pt'}: ", "unknown extra file"),
    "bad COMPLETE JSON": (lambda d: (d / ckpt.MARKER).write_text('{"step": 1'), lambda d: f"{d / ckpt.MARKER}: ", "not a readable JSON marker"),
    "marker without files": (lambda d: (d / ckpt.MARKER).write_text(json.dumps({"step": STEPS, "world_size": 1, "train_batch_size": 4})),
                             lambda d: f"{d / ckpt.MARKER}: ", "missing or mistyped field(s) files"),
    "marker not an object": (lambda d: (d / ckpt.MARKER).write_text("[]"), lambda d: f"{d / ckpt.MARKER}: ", "a JSON list, not an object"),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", DAMAGE)
def test_each_kind_of_damage_is_named_and_the_previous_checkpoint_used(copy, caplog, kind):
    damage, where, what = DAMAGE[kind]
    newest = tag_dir(copy, STEPS)
    assert ckpt.verify(newest) == (json.loads((newest / ckpt.MARKER).read_text()), [])  # intact before the damage
    damage(newest)
    _, faults = ckpt.verify(newest)
    assert len(faults) == 1 and faults[0].startswith(where(newest)) and what in faults[0], faults
    with caplog.at_level("WARNING"):
        step, tag, _ = ckpt.newest_intact(copy / "checkpoints")
    assert (step, tag) == (STEPS - 2, ckpt.tag_for(STEPS - 2))
    assert faults[0] in caplog.text


@pytest.mark.slow
def test_no_intact_checkpoint_is_an_error_naming_each(copy):
    for step in range(2, STEPS + 1, 2):
        truncate(tag_dir(copy, step) / MODEL_STATES)
    with pytest.raises(ckpt.CheckpointError) as error:
        ckpt.newest_intact(copy / "checkpoints")
    message = str(error.value)
    assert message.startswith(f"no intact checkpoint in {copy / 'checkpoints'}: ")
    for step in range(2, STEPS + 1, 2):
        assert f"{tag_dir(copy, step) / MODEL_STATES}: " in message


@pytest.mark.slow
def test_resume_skips_damaged_checkpoints_and_reproduces_the_uninterrupted_curve(copy, reference):
    """Steps 10, 8, 6 and 4 damaged four ways: the resumed run warns about each, continues from step 2,
    prunes a torn older directory, and its steps 3-10 equal the uninterrupted run's."""
    truncate(tag_dir(copy, 10) / MODEL_STATES)
    flip_4k(tag_dir(copy, 8) / MODEL_STATES)
    truncate(tag_dir(copy, 6) / RNG)
    (tag_dir(copy, 4) / ckpt.MARKER).write_text("{not json")
    torn = tag_dir(copy, 1)  # a save killed before its marker
    torn.mkdir()
    (torn / MODEL_STATES).write_bytes(b"torn")
    result = train(copy, "--resume")
    for fault in (f"{tag_dir(copy, 10) / MODEL_STATES}: ", "recorded (truncated or overwritten)",
                  f"{tag_dir(copy, 8) / MODEL_STATES}: SHA-256 differs", f"{tag_dir(copy, 6) / RNG}: ",
                  f"{tag_dir(copy, 4) / ckpt.MARKER}: not a readable JSON marker"):
        assert fault in result.stderr, (fault, result.stderr[-3000:])
    resumed = records(copy)[STEPS:]  # the first run logged steps 1-10; the resumed one appended 3-10
    expected = records(reference)[2:]
    assert [r["step"] for r in resumed] == list(range(3, STEPS + 1))
    for got, want in zip(resumed, expected):
        assert {k: got.get(k) for k in CURVE_KEYS} == {k: want.get(k) for k in CURVE_KEYS}, got["step"]
    assert not torn.exists()
    assert ckpt.newest_intact(copy / "checkpoints")[0] == STEPS  # every damaged step was written again
    for step in range(4, STEPS + 1, 2):
        assert ckpt.verify(tag_dir(copy, step))[1] == []


# ------------------------------------------------------------------ a full disk
SMALL_DISK = textwrap.dedent(
    """
    import errno, json, sys, torch
    import fastscale.train.checkpoint as ckpt
    from fastscale.train import Trainer

    free = {"bytes": None}  # unlimited until the disk "fills up" after the first checkpoint

    class SmallDisk:
        def __init__(self, file):
            self.file = file
        def write(self, data):
            if free["bytes"] is not None and len(data) > free["bytes"]:
                self.file.write(bytes(data)[: free["bytes"]])
                free["bytes"] = 0
                raise OSError(errno.ENOSPC, "No space left on device")
            if free["bytes"] is not None:
                free["bytes"] -= len(data)
            return self.file.write(data)
        def __getattr__(self, name):
            return getattr(self.file, name)
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self.file.close()

    ckpt.open = lambda path, mode="r", *a, **k: SmallDisk(open(path, mode, *a, **k)) if "w" in mode else open(path, mode, *a, **k)

    class Regression(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(8, 1)
        def forward(self, x, y):
            return torch.nn.functional.mse_loss(self.linear(x).squeeze(-1), y)

    def fill_the_disk(record):
        if record["step"] == 11:
            free["bytes"] = 300

    torch.manual_seed(0)
    x = torch.randn(256, 8)
    data = torch.utils.data.TensorDataset(x, x @ torch.linspace(-1, 1, 8))
    trainer = Trainer(Regression(), {"train_batch_size": 16, "train_micro_batch_size_per_gpu": 8}, data, out_dir=sys.argv[1],
                      steps=30, lr=0.05, warmup_steps=1, eval_interval=0, checkpoint_interval=10, noise_scale_interval=0)
    trainer.fit(callback=fill_the_disk)
    """
)


@pytest.mark.slow
def test_a_full_disk_during_a_save_is_named_and_loses_nothing(tmp_path):
    out = tmp_path / "run"
    result = run([sys.executable, "-c", SMALL_DISK, str(out)], env=training_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    failed = tag_dir(out, 20)
    message = result.stderr.splitlines()[-1]
    assert f"OSError: [Errno 28] checkpoint {failed} not saved: no space left on device writing {failed / MODEL_STATES} (it needs at least " in message, result.stderr[-3000:]
    assert message.endswith(" bytes for its tensors) (ENOSPC); the partial directory was removed; checkpoints kept: step00000010")
    assert not failed.exists()
    assert ckpt.newest_intact(out / "checkpoints")[0] == 10 and ckpt.verify(tag_dir(out, 10))[1] == []
    assert [r["step"] for r in records(out)] == list(range(1, 21))
    assert sorted(p.name for p in out.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")) == []
