"""Placement of a sweep's runs on fake device inventories (expected counts from plan.estimate, computed
here), the scheduler's device shares, and one tiny run through DeepSpeed's launcher on CPU: killed
with its sweep, resumed, and the same learning curve as the process launcher (~30 s), both within a
quarter of the host memory their placement line promised."""

import json
import math
import os
import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from fastscale.model.config import GPTConfig
from fastscale.sweep import SweepError, SweepSpec, run_sweep
from fastscale.sweep.devices import MAX_RUNS_PER_GPU, PROCESS_DEVICE_BYTES, Inventory, deepspeed_for, place_runs
from fastscale.sweep.runner import LAUNCHERS, _Slots
from fastscale.sweep.spec import Run
from fastscale.train.config import DeepSpeedSettings, TrainSettings, check_deepspeed_config
from fastscale.train.plan import PROCESS_HOST_BYTES, GiB, Choice, estimate

from processes import started
from sweeps import TINY, curves, trainers_of, wait_for

H100_NODE = Inventory("cuda", host_memory=2048 * GiB, cores=96, gpu_memory=80 * GiB, device_ids=tuple(str(i) for i in range(8)))
ONE_24GB = Inventory("cuda", host_memory=128 * GiB, cores=16, gpu_memory=24 * GiB, device_ids=("0",))
LAPTOP_CPU = Inventory("cpu", host_memory=24 * GiB, cores=2)
BATCH = {"train_batch_size": 64, "train_micro_batch_size_per_gpu": 1}


def parsed(ds, device_type="cuda"):
    """The sweep's DeepSpeed section as the runner hands it to place_runs: parsed for one rank."""
    return DeepSpeedSettings.parse(ds, 1, device_type=device_type)


def gpt(n):
    return GPTConfig.from_params(n, 50257, 2048)


def device_need(config, choice, width=1, bf16=True):
    return estimate(config, choice, world_size=width, micro_batch=1, bf16=bf16, gpus=width)["device"] + PROCESS_DEVICE_BYTES


def test_cpu_runs_one_per_core_or_jobs_and_keep_the_sweeps_deepspeed_config():
    models = {f"r{i}": GPTConfig.from_params(n, 11, 193, head_dim=8) for i, n in enumerate(TINY["sizes"])}
    layout = place_runs(models, parsed(TINY["deepspeed"], "cpu"), LAPTOP_CPU)
    assert {p.per_device for p in layout.placements.values()} == {2}
    assert "2 at a time" in layout.reason and "2 slot(s)" in layout.reason
    assert {p.per_device for p in place_runs(models, parsed(TINY["deepspeed"], "cpu"), LAPTOP_CPU, jobs=1).placements.values()} == {1}
    # as written, with the batch sizes every rank resolves
    kept = deepspeed_for(layout.placements["r0"], parsed(TINY["deepspeed"], "cpu"), TrainSettings())
    assert kept == {**TINY["deepspeed"], "gradient_accumulation_steps": 2}


def test_cpu_host_memory_limits_large_runs_and_refuses_one_that_fits_nowhere():
    ds = {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 0}}
    big = GPTConfig.from_params(8e8, 257, 193)  # fp32 ZeRO-0: 16 bytes per parameter, ~12.7 GiB
    need = estimate(big, Choice(0), micro_batch=1, bf16=False, gpus=0)["host"]
    assert math.floor(0.9 * 24 * GiB / need) == 1  # one fits in 24 GiB, two do not
    assert place_runs({"big": big}, parsed(ds, "cpu"), LAPTOP_CPU).placements["big"].per_device == 1
    with pytest.raises(SweepError, match=r"sweep run huge: .* host memory"):
        place_runs({"huge": GPTConfig.from_params(2e9, 257, 193)}, parsed(ds, "cpu"), LAPTOP_CPU)  # ~31 GiB


def test_small_runs_pack_four_per_80gb_gpu():
    models = {f"N{n:.0e}": GPTConfig.from_params(n, 257, 193, head_dim=16) for n in (1e4, 1e5, 1e6)}
    ds = {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 0}}
    layout = place_runs(models, parsed(ds), H100_NODE)
    for placement in layout.placements.values():
        assert (placement.gpus, placement.per_device, placement.choice) == (1, MAX_RUNS_PER_GPU, Choice(0))
        assert math.floor(0.9 * 80 * GiB / device_need(GPTConfig.from_params(1e6, 257, 193, head_dim=16), Choice(0), bf16=True)) > 4
    assert "4 per GPU" in layout.reason and "MAX_RUNS_PER_GPU" in layout.reason


def test_memory_limits_runs_per_gpu_by_the_planners_estimate():
    config = gpt(5e8)  # bf16 ZeRO-0: 20 bytes per parameter plus activations
    expected = math.floor(0.9 * 80 * GiB / device_need(config, Choice(0)))
    assert 1 < expected < MAX_RUNS_PER_GPU  # the memory cap, not the constant, decides
    placement = place_runs({"mid": config}, parsed(BATCH), H100_NODE).placements["mid"]
    assert (placement.choice, placement.per_device, placement.bf16) == (Choice(0), expected, True)


def test_run_too_large_for_one_gpu_offloads_on_a_single_gpu_machine():
    config = gpt(1e9)
    layout = place_runs({"N1e9": config}, parsed(BATCH), ONE_24GB)
    placement = layout.placements["N1e9"]
    assert placement.choice.offload_optimizer == "cpu" and placement.gpus == 1
    no_offload = [c for c in (Choice(0), Choice(1), Choice(2), Choice(3), Choice(0, checkpointing=True), Choice(3, checkpointing=True))]
    assert all(device_need(config, c) > 0.9 * 24 * GiB for c in no_offload)
    assert device_need(config, placement.choice) <= 0.9 * 24 * GiB
    ds = deepspeed_for(placement, parsed(BATCH), TrainSettings(lr=2e-4, weight_decay=0.05))
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["optimizer"]["params"]["lr"] == 2e-4 and ds["optimizer"]["params"]["weight_decay"] == 0.05
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (64, 1, 64)
    check_deepspeed_config(ds, 1, device_type="cuda")


def test_run_too_large_for_one_gpu_spans_the_fewest_gpus_that_hold_it():
    config = gpt(7e9)
    placement = place_runs({"N7e9": config}, parsed(BATCH), H100_NODE).placements["N7e9"]
    assert placement.per_device == 1 and placement.choice.offload_optimizer == "none"
    capacity = 0.9 * 80 * GiB
    assert device_need(config, placement.choice, placement.gpus) <= capacity
    narrower = [w for w in (1, 2, 4, 8) if w < placement.gpus]
    assert narrower and all(device_need(config, Choice(s, checkpointing=True), w) > capacity for w in narrower for s in (0, 1, 2, 3))
    ds = deepspeed_for(placement, parsed(BATCH), TrainSettings())
    assert ds["gradient_accumulation_steps"] == 64 // placement.gpus
    check_deepspeed_config(ds, placement.gpus, device_type="cuda")


def test_the_sweeps_explicit_settings_win_over_the_planner():
    ds = {**BATCH, "zero_optimization": {"stage": 3, "stage3_max_live_parameters": 12345}, "bf16": {"enabled": False}}
    placement = place_runs({"r": gpt(1e8)}, parsed(ds), H100_NODE).placements["r"]
    assert placement.choice.stage == 3 and placement.bf16 is False
    merged = deepspeed_for(placement, parsed(ds), TrainSettings())
    assert merged["bf16"] == {"enabled": False} and merged["zero_optimization"]["stage3_max_live_parameters"] == 12345
    assert merged["zero_optimization"]["stage3_prefetch_bucket_size"] == int(5e7)  # filled by the planner


def test_a_run_that_fits_nowhere_is_refused_with_what_it_needs():
    with pytest.raises(SweepError, match=r"sweep run N1e11: 1.*e\+11 parameters fit on no GPU layout .*1 GPU\(s\) of 24.0 GiB.*needs"):
        place_runs({"N1e11": gpt(1e11)}, parsed(BATCH), ONE_24GB)


def test_bad_jobs_and_launcher_are_refused_by_name(tmp_path):
    with pytest.raises(SweepError, match="jobs=0; expected a positive integer"):
        place_runs({}, parsed(BATCH, "cpu"), LAPTOP_CPU, jobs=0)
    with pytest.raises(SweepError, match=r"launcher='mpi'; expected one of " + re.escape(str(LAUNCHERS))):
        run_sweep(SweepSpec.from_dict(TINY), tmp_path, launcher="mpi")


def test_scheduler_packs_small_runs_and_gives_a_wide_run_idle_gpus():
    two_gpus = Inventory("cuda", host_memory=512 * GiB, cores=32, gpu_memory=80 * GiB, device_ids=("4", "5"))
    layout = place_runs({"small": gpt(1e6), "wide": gpt(4e9)}, parsed(BATCH), two_gpus)
    assert layout.placements["small"].per_device == 4 and layout.placements["wide"].gpus == 2
    slots = _Slots(layout, limit=32, launcher="deepspeed", deepspeed={})
    small, wide = (Run(name, 0.0, 0.0, 0, 1, 1e-3) for name in ("small", "wide"))
    held = [slots.take("train", small) for _ in range(8)]
    assert [devices for devices, _ in held] == [[0], [1]] * 4  # spread over the GPUs, 4 on each
    assert slots.take("train", small) is None and slots.take("train", wide) is None
    assert slots.device_ids([1]) == ["5"]  # the name CUDA_VISIBLE_DEVICES gives it
    for devices, share in held:
        slots.release(type("Active", (), {"devices": devices, "share": share}))
    assert slots.take("train", wide)[0] == [0, 1]
    assert slots.take("evaluate", small) is not None  # evaluations run on the CPU: no GPU share


@pytest.fixture(scope="module")
def tiny_sweeps(tmp_path_factory):
    """One tiny run trained twice: by the process launcher (its placement line kept) and, meanwhile on
    the other core, under DeepSpeed's launcher, killed with its sweep and resumed."""
    tmp_path = tmp_path_factory.mktemp("launchers")
    tiny = {**TINY, "sizes": [3e3], "tokens": [1.2e4]}  # 16 steps, checkpoints every 5
    spec_file = tmp_path / "tiny.json"
    spec_file.write_text(json.dumps(tiny))
    reference, lines = tmp_path / "process", []
    with ThreadPoolExecutor(1) as pool:
        reference_done = pool.submit(run_sweep, SweepSpec.from_dict(tiny), reference, launcher="process", on_layout=lines.append)
        _kill_and_resume_under_deepspeed(tmp_path, tiny, spec_file)
        reference_done.result()
    return reference, tmp_path / "deepspeed", lines


@pytest.mark.slow
def test_deepspeed_launcher_on_cpu_dies_with_its_sweep_and_matches_the_process_launcher(tiny_sweeps):
    reference, out, _ = tiny_sweeps
    (entry,) = json.loads((out / "results.json").read_text())["runs"].values()
    assert entry["state"] == "done" and entry["attempts"] == 2
    assert "launch.py" in (out / "runs" / "N3e03_t1.2e04_s0" / "train.log").read_text()  # it went through DeepSpeed's launcher
    assert curves(out) == curves(reference)  # fp32, same seed: identical losses step by step


@pytest.mark.slow
def test_the_placement_line_is_within_a_quarter_of_each_runs_measured_peak_rss(tiny_sweeps):
    """The host memory the placement line promises per run (the planner's estimate with the process
    baseline) against the peak RSS the trainer measured (ru_maxrss) under either launcher."""
    reference, out, (line,) = tiny_sweeps
    promised = re.search(r"each needs ([0-9.]+) MiB of host memory by the planner \(incl\. 415\.0 MiB per process\)", line)
    assert promised, line
    for sweep_dir in (reference, out):
        (entry,) = json.loads((sweep_dir / "results.json").read_text())["runs"].values()
        measured = entry["summary"]["peak_rss_bytes"] / 2**20
        assert abs(float(promised.group(1)) / measured - 1) <= 0.25, (line, measured)


def _kill_and_resume_under_deepspeed(tmp_path, tiny, spec_file):
    out = tmp_path / "deepspeed"
    command = [sys.executable, "-m", "fastscale.cli", "sweep", str(out), "--preset", str(spec_file), "--launcher", "deepspeed", "--no-report"]
    metrics = out / "runs" / "N3e03_t1.2e04_s0" / "metrics.jsonl"
    # the sweep alone is killed (its launcher must follow); the whole group only if the test fails
    with started(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as sweep:
        try:
            wait_for(lambda: metrics.is_file() and metrics.stat().st_size > 0, 90, "the first logged step under the deepspeed launcher")
        finally:
            os.kill(sweep.pid, signal.SIGKILL)
            sweep.wait()
        # the launcher gets SIGTERM at its parent's death and terminates its rank
        wait_for(lambda: not any(trainers_of(out)), 40, "the killed sweep's launcher and rank to exit")

    run_sweep(SweepSpec.from_dict(tiny), out, launcher="deepspeed")


def test_the_cpu_placement_line_gives_each_runs_host_memory_with_the_process_baseline():
    ds = {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 0}}
    models = {f"N{n:.0e}": GPTConfig.from_params(n, 257, 193, head_dim=16) for n in (1e4, 1e6)}
    layout = place_runs(models, parsed(ds, "cpu"), LAPTOP_CPU)
    # fp32 ZeRO-0: 16 bytes per parameter, activations, one logits chunk and its gradient, the process
    needs = {name: estimate(config, Choice(0), micro_batch=4, bf16=False, gpus=0)["host"] for name, config in models.items()}
    assert {name: p.device_bytes for name, p in layout.placements.items()} == needs
    assert all(need - PROCESS_HOST_BYTES < 100 * 2**20 for need in needs.values())  # the process is most of it at these sizes
    low, high = needs["N1e+04"] / 2**20, needs["N1e+06"] / 2**20
    assert f"each needs {low:.1f} MiB to {high:.1f} MiB of host memory by the planner (incl. 415.0 MiB per process)" in layout.reason
