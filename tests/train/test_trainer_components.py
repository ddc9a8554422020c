"""The Trainer's parts, each against an independent reference: the DataLoader's order against the sample
stream built from the permutations themselves, the noise scale's per-parameter dot products against a
float64 concatenation, recomputation against the plain model, the CUDA generators' round trip (mocked:
this machine has no GPU, so no CUDA generator is exercised), and the monitor's config checks."""

import logging
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastscale.train import ConfigError
from fastscale.train import checkpoint as ckpt
from fastscale.train.config import RunConfig, check_deepspeed_config
from fastscale.train.loader import Layout, StepSampler, batch_loader, worker_count
from fastscale.train.noise_scale import gradient_dot, two_batch_norms
from fastscale.train.trainer import recompute_in_backward


# ------------------------------------------------------------------ data order
def stream(n_rows: int, seed: int, count: int) -> np.ndarray:
    """The first count samples of the infinite stream: epoch e is the permutation seeded [seed, e]."""
    epochs = -(-count // n_rows)
    return np.concatenate([np.random.default_rng([seed, e]).permutation(n_rows) for e in range(epochs)])[:count]


@pytest.mark.parametrize("world_size, accumulation, micro", [(1, 1, 3), (2, 3, 2), (3, 2, 1)])
def test_sampler_gives_each_rank_its_slice_of_every_step(world_size, accumulation, micro):
    """Step k holds stream samples k*B .. (k+1)*B - 1 (B = train_batch_size); in it, rank r's micro-batch
    m is the (m * world_size + r)-th run of `micro` samples: the order the Trainer always used."""
    n_rows, seed, steps = 11, 5, 7
    batch = micro * accumulation * world_size
    samples = stream(n_rows, seed, steps * batch)
    for rank in range(world_size):
        layout = Layout(n_rows, seed, batch, micro, accumulation, world_size, rank)
        got = list(StepSampler(layout, 0, steps))
        expected = [
            samples[step * batch + (m * world_size + rank) * micro :][:micro].tolist() for step in range(steps) for m in range(accumulation)
        ]
        assert got == expected
        # a resumed run reads the rows the uninterrupted one read from its step on
        assert list(StepSampler(layout, 4, steps)) == expected[4 * accumulation :]
        assert len(StepSampler(layout, 4, steps)) == (steps - 4) * accumulation


class Rows(torch.utils.data.Dataset):
    def __len__(self):
        return 13

    def __getitem__(self, i):
        return torch.tensor([i, 2 * i])


def test_loader_workers_keep_the_order_and_leave_the_global_generator_alone():
    layout = Layout(13, 2, 6, 3, 2, 1, 0)
    before = torch.get_rng_state()
    loader = batch_loader(Rows(), StepSampler(layout, 1, 5), torch.utils.data.default_collate, workers=2, prefetch=2, pin_memory=False, seed=2)
    batches = [b[:, 0].tolist() for b in loader]
    assert torch.equal(torch.get_rng_state(), before)  # dropout after a resume draws what it drew before
    assert batches == list(StepSampler(layout, 1, 5))


def test_batches_are_collated_in_the_process_on_a_cpu_and_by_a_worker_on_a_gpu_unless_set():
    assert worker_count(None, torch.device("cpu")) == 0
    assert worker_count(None, torch.device("cuda", 1)) == 1
    assert worker_count(3, torch.device("cpu")) == 3 and worker_count(0, torch.device("cuda")) == 0


# ------------------------------------------------------------------ noise scale
def gradients(generator, dtype=torch.float32):
    shapes = [(7, 5), (5,), (3, 3, 2)]
    return [torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype) for shape in shapes]


def test_two_batch_norms_match_the_concatenated_gradient_in_float64():
    generator = torch.Generator().manual_seed(11)
    a, b = gradients(generator), gradients(generator)
    flat_a, flat_b = (torch.cat([g.double().reshape(-1) for g in grads]) for grads in (a, b))
    small = (flat_a.dot(flat_a) + flat_b.dot(flat_b)) / 2
    mean = (flat_a + flat_b) / 2
    got = two_batch_norms(a, b)
    assert got.dtype == torch.float64
    assert got.tolist() == pytest.approx([small.item(), mean.dot(mean).item()], rel=1e-6)


def test_gradient_dot_upcasts_bfloat16_and_treats_none_as_zero():
    generator = torch.Generator().manual_seed(12)
    a, b = gradients(generator, torch.bfloat16), gradients(generator, torch.bfloat16)
    reference = sum(x.double().reshape(-1).dot(y.double().reshape(-1)) for x, y in zip(a[1:], b[1:]))
    assert gradient_dot([None, *a[1:]], b).item() == pytest.approx(reference.item(), rel=1e-6)
    with pytest.raises(ValueError, match="3 gradients against 2"):
        gradient_dot(a, b[:2])


# ------------------------------------------------------------------ recomputation
class Block(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(width, width)
        self.calls = 0

    def forward(self, x, *, scale):
        self.calls += 1
        return torch.nn.functional.dropout(torch.tanh(self.linear(x)) * scale, 0.3, self.training)


class Stack(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(Block(6) for _ in range(3))
        self.head = torch.nn.Linear(6, 1)

    def forward(self, x):
        for block in self.blocks:
            x = block(x, scale=1.5)
        return self.head(x).square().mean()


def test_recompute_in_backward_matches_the_plain_model_and_keeps_its_state_dict():
    torch.manual_seed(4)
    plain = Stack()
    recomputed = Stack()
    recomputed.load_state_dict(plain.state_dict())
    blocks = list(recomputed.blocks)
    assert recompute_in_backward(recomputed, blocks) == 3
    assert recompute_in_backward(recomputed, blocks) == 0  # a second fit does not wrap twice
    assert list(recomputed.state_dict()) == list(plain.state_dict())
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(5))
    grads = []
    for model in (plain, recomputed):
        torch.manual_seed(6)  # the same dropout masks: recomputation replays the generator's state
        grads.append(torch.autograd.grad(model(x), list(model.parameters())))
    for g_plain, g_recomputed in zip(*grads):
        torch.testing.assert_close(g_recomputed, g_plain, rtol=0, atol=0)
    assert [b.calls for b in blocks] == [2, 2, 2]  # forward, then again in backward
    unwrapped = Stack()
    unwrapped.load_state_dict(recomputed.state_dict())  # checkpoints load into the model as written


def test_deepspeed_recompute_options_are_refused():
    ds = {"train_batch_size": 2, "activation_checkpointing": {"partition_activations": True}}
    with pytest.raises(ConfigError, match=r"activation_checkpointing.partition_activations=True: .*torch.utils.checkpoint"):
        check_deepspeed_config(ds, 1, device_type="cpu")
    ds["activation_checkpointing"] = {"partition_activations": False}
    assert check_deepspeed_config(ds, 1, device_type="cpu")["activation_checkpointing"] == {"partition_activations": False}


def test_zero3_names_lose_the_recompute_wrapper():
    assert ckpt.without_recompute_wrapper("blocks.2._checkpoint_wrapped_module.attn.weight") == "blocks.2.attn.weight"


# ------------------------------------------------------------------ generators of every CUDA device
@pytest.fixture
def cuda_devices(monkeypatch):
    """Two fake CUDA devices whose generator states are random byte tensors; set_rng_state_all records."""
    generator = torch.Generator().manual_seed(7)
    devices = {"states": [torch.randint(0, 256, (16,), dtype=torch.uint8, generator=generator) for _ in range(2)], "set": []}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(devices["states"]))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in devices["states"]])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: devices["set"].append([s.clone() for s in states]))
    return devices


def test_cuda_generators_of_every_device_are_saved_and_restored(cuda_devices, tmp_path):
    path = tmp_path / "rng_rank0.pt"
    path.write_bytes(ckpt.rng_bytes())
    saved_cpu = torch.get_rng_state()
    torch.rand(3)  # move the CPU generator on
    ckpt.load_rng(path)
    assert torch.equal(torch.get_rng_state(), saved_cpu)
    assert len(cuda_devices["set"]) == 1
    for restored, original in zip(cuda_devices["set"][0], cuda_devices["states"], strict=True):
        assert torch.equal(restored, original)


def test_fewer_cuda_devices_on_resume_restore_what_exists_and_say_it_is_not_exact(cuda_devices, tmp_path, caplog):
    path = tmp_path / "rng_rank0.pt"
    path.write_bytes(ckpt.rng_bytes())
    cuda_devices["states"] = cuda_devices["states"][:1]
    with caplog.at_level(logging.WARNING, logger="fastscale.train.checkpoint"):
        ckpt.load_rng(path)
    assert "generators of 2 CUDA device(s), this process has 1: the resume is not exact" in caplog.text
    assert len(cuda_devices["set"][0]) == 1


# ------------------------------------------------------------------ monitor
RUN = {"model": {"n_layer": 1}, "data": {"dataset": "digits"}, "seq_len": 8}


@pytest.mark.parametrize("monitor, message", [
    ({"tensorbored": {}}, r"unknown monitor\(s\) \['tensorbored'\]"),
    ({"csv_monitor": []}, r"monitor.csv_monitor=\[\] is a list; expected an object"),
    ({"csv_monitor": {"enabled": "yes"}}, r"monitor.csv_monitor.enabled='yes' is a string; expected true or false"),
    ({"wandb": {"enabled": True, "mode": "cloud"}}, r"monitor.wandb.mode='cloud'; expected 'offline' \(the default\) or 'online'"),
])
def test_run_config_monitor_errors_name_the_field(monitor, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict({**RUN, "monitor": monitor})


def test_monitor_sections_are_checked_by_deepspeeds_model_and_for_their_package(monkeypatch):
    from fastscale.train import monitor

    with pytest.raises(ConfigError, match=r"monitor.csv_monitor.output_dir='x': Extra inputs are not permitted"):
        monitor.check_sections({"csv_monitor": {"enabled": True, "output_dir": "x"}})
    monkeypatch.setattr(monitor.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"monitor.tensorboard.enabled=true needs the tensorboard package \(pip install tensorboard\)"):
        monitor.check_sections({"tensorboard": {"enabled": True}})
    monitor.check_sections({"tensorboard": {"enabled": False}})  # a disabled monitor needs nothing


@pytest.mark.slow
def test_peak_rss_is_the_programs_own_not_that_of_the_process_it_was_forked_from():
    """A sweep inside pytest forks each trainer from a large process (preexec_fn: fork + exec, not vfork):
    ru_maxrss then carries the parent's size; VmHWM is the program's own."""
    import subprocess
    import sys

    ballast = b"\x01" * 2**30  # 1 GiB of touched pages in the parent
    code = ("import resource; from fastscale.train.trainer import peak_rss_bytes; "
            "print(peak_rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=lambda: None, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    own, inherited = map(int, result.stdout.split())
    assert inherited >= len(ballast)  # the quirk: the parent's high-water mark
    assert own < len(ballast) / 2  # the child's own: the interpreter and torch (~250 MiB)
    del ballast


FAULTS_OF_STEPS = """
import resource, sys, torch
from fastscale.train.trainer import keep_freed_host_memory
if sys.argv[1] == "kept":
    assert keep_freed_host_memory()
def step():  # a step's worth of activations: written, then all freed
    return [torch.ones(2 * 1024 * 1024) for _ in range(8)]  # 8 x 8 MiB
step()  # the first step faults its pages in either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_a_cpu_step_reuses_the_memory_the_previous_step_freed():
    """keep_freed_host_memory (the Trainer on a CPU): five more 64 MiB steps reuse the first step's pages;
    by default glibc gives some back after each step, so that every step faults at least one 8 MiB block
    (2,048 pages of 4 KiB) in again."""
    faults = {}
    for mode in ("default", "kept"):
        result = subprocess.run([sys.executable, "-c", FAULTS_OF_STEPS, mode], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        faults[mode] = int(result.stdout)
    assert faults["default"] >= 5 * 2048, faults
    assert faults["kept"] <= faults["default"] / 4, faults
