"""The memory planner's sizes with units, the process baseline in every rank's host memory, and the
reason it gives when nothing fits (which memory, device, host or disk, stopped the closest choice)."""

import pytest

from fastscale.model import GPTConfig, preset
from fastscale.train.plan import PROCESS_HOST_BYTES, Choice, estimate, no_fit_reason, parse_bytes, plan

GiB = 2**30


@pytest.mark.parametrize("text, expected", [
    ("24GiB", 24 * 2**30), ("80GB", 80 * 10**9), ("512MiB", 512 * 2**20), ("1e9B", 10**9), (" 2.5 gib ", int(2.5 * 2**30)), ("3TB", 3 * 10**12),
])
def test_sizes_with_units_parse_to_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text, message", [
    ("24", r"--memory='24' has no unit; expected a size with its unit, such as 24GiB"),
    ("1e9", r"--memory='1e9' has no unit"),
    ("lots", r"--memory='lots' has no unit"),
    ("GiB", r"--memory='GiB'; expected a size with its unit"),
    ("0GiB", r"--memory='0GiB'; expected a positive size"),
    ("-1GB", r"--memory='-1GB'; expected a positive size"),
    ("nanGiB", r"--memory='nanGiB'; expected a positive size"),
])
def test_a_size_without_a_unit_or_not_positive_is_refused_naming_the_argument(text, message):
    with pytest.raises(ValueError, match=message):
        parse_bytes(text, "--memory")


def test_every_rank_holds_the_process_baseline_in_host_memory():
    config = GPTConfig(vocab_size=257, seq_len=64, n_layer=2, d_model=64, n_head=4)
    P = config.n_params_total
    cpu = estimate(config, Choice(0), micro_batch=2, bf16=False, gpus=0)
    assert cpu["components"]["process"] == PROCESS_HOST_BYTES and cpu["place"]["process"] == "cpu"
    assert cpu["host"] == sum(cpu["components"].values()) and cpu["device"] == 0
    gpu = estimate(config, Choice(2, "cpu", checkpointing=True), world_size=2, micro_batch=2, bf16=True, gpus=2)
    # on a GPU machine the host holds the offloaded optimizer state (12P, its fp32 gradients 4P, both
    # halved over 2 ranks), the bf16 gradient partition (2P / 2) and the process
    assert gpu["host"] == int(12 * P / 2) + int(4 * P / 2) + int(2 * P / 2) + PROCESS_HOST_BYTES
    assert 300 * 2**20 < PROCESS_HOST_BYTES < 600 * 2**20  # torch, DeepSpeed, torch._dynamo (measured: 403-417 MiB)


def test_the_issues_example_says_host_memory_was_the_limit():
    """1.3e9 parameters on one 24 GiB GPU of a 24 GiB machine, no disk: the choices that keep the
    optimizer state on the GPU overflow it; those that offload it overflow the host."""
    config = preset(1.3e9, vocab_size=50304, seq_len=1024)
    P = config.n_params_total
    rows = plan(config, memory=parse_bytes("24GiB"), host=parse_bytes("24GiB"), gpus=1, allow_nvme=False)
    assert not any(row["fits"] for row in rows)
    assert all(set(row["over"]) == ({"host"} if row["choice"].offload_optimizer == "cpu" else {"device"}) for row in rows)
    # the closest: ZeRO-2 offloading the optimizer: 12P + 4P of fp32 state and 2P of bf16 gradients on the host
    host_need = 18 * P + PROCESS_HOST_BYTES
    reason = no_fit_reason(rows)
    assert reason.startswith("host memory is the limit: the closest choice, ZeRO-2 + optimizer->cpu + activation checkpointing, "
                             f"needs {host_need / GiB:.1f} GiB of host memory per node where {0.9 * 24:.1f} GiB is usable")
    assert "8 by device (GPU) memory, 3 by host memory" in reason and "offloading to disk (nvme) was not considered" in reason


def test_a_small_gpu_with_a_large_host_is_limited_by_device_memory():
    config = preset(1.3e9, vocab_size=50304, seq_len=1024)
    rows = plan(config, memory=parse_bytes("512MiB"), host=parse_bytes("1TiB"), gpus=1, allow_nvme=False)
    reason = no_fit_reason(rows)
    assert reason.startswith("device (GPU) memory is the limit: the closest choice, ZeRO-3 + optimizer->cpu + params->cpu")
    assert f"where {0.9 * 0.5:.1f} GiB is usable" in reason and "by host memory" not in reason


def test_a_full_disk_stops_the_nvme_choices():
    config = preset(3e9, vocab_size=257, seq_len=64)
    roomy = plan(config, memory=0, gpus=0, host=parse_bytes("24GiB"), disk=parse_bytes("1TB"))
    assert next(row for row in roomy if row["fits"])["choice"].offload_optimizer == "nvme"
    rows = plan(config, memory=0, gpus=0, host=parse_bytes("24GiB"), disk=parse_bytes("10GB"))
    nvme = [row for row in rows if row["choice"].offload_optimizer == "nvme"]
    assert nvme and all(set(row["over"]) == {"disk"} and row["over"]["disk"][0] == row["nvme"] for row in nvme)
    assert "2 by disk space at the nvme path" in no_fit_reason(rows)


def test_no_fit_reason_refuses_rows_of_which_one_fits():
    rows = plan(GPTConfig(vocab_size=257, seq_len=64, n_layer=1, d_model=32, n_head=2), memory=parse_bytes("80GiB"), host=parse_bytes("64GiB"))
    with pytest.raises(ValueError, match="a choice fits"):
        no_fit_reason(rows)


def test_fastscale_plan_names_the_limit_and_refuses_a_bare_number(capsys):
    from fastscale.cli import main

    assert main(["plan", "--params", "1.3e9", "--memory", "24GiB", "--gpus", "1", "--host-memory", "24GiB"]) == 1
    out = capsys.readouterr().out
    assert "nothing fits: host memory is the limit: the closest choice, ZeRO-2 + optimizer->cpu" in out and "pass --nvme-path DIR" in out
    assert main(["plan", "--params", "1.3e9", "--memory", "24", "--gpus", "1"]) == 2
    assert "--memory='24' has no unit" in capsys.readouterr().err
    assert main(["plan", "--params", "1e6", "--memory", "24GiB", "--host-memory", "64"]) == 2
    assert "--host-memory='64' has no unit" in capsys.readouterr().err


@pytest.mark.parametrize("vocab, tie", [(50257, False), (131072, True)])
def test_the_vocabulary_line_counts_its_states_and_the_logits_the_fused_loss_avoids(capsys, vocab, tie):
    """Written out from the shapes: V x d weights (twice untied), bf16 weights and gradients, 12 bytes of
    fp32 optimizer state per parameter; eager holds three float32 [tokens, V] arrays (logits, log-softmax,
    gradient), the fused loss one chunk of at most 128 MiB of float32 logits plus two gradients."""
    from fastscale.cli import main
    from fastscale.train.plan import vocabulary_bytes

    config = GPTConfig(vocab_size=vocab, seq_len=1024, n_layer=2, d_model=256, n_head=4, tie_embeddings=tie)
    tokens = 4 * 1024
    v = vocabulary_bytes(vocab, 256, tokens, tie_embeddings=tie, bf16=True)
    matrices = 1 if tie else 2
    assert (v["weights"], v["gradients"], v["optimizer_state"]) == (matrices * vocab * 256 * 2, matrices * vocab * 256 * 2, matrices * vocab * 256 * 12)
    assert v["eager_loss"] == 3 * tokens * vocab * 4
    rows = min(tokens, 128 * 2**20 // (vocab * 4))
    assert v["fused_loss"] == (rows * vocab + vocab * 256 + tokens * 256) * 4 < v["eager_loss"] / 3
    assert estimate(config, Choice(0), micro_batch=4)["components"]["logits"] == v["fused_loss"]

    assert main(["plan", "--params", "1e8", "--vocab-size", str(vocab), "--micro-batch", "4", "--memory", "80GiB", "--host-memory", "64GiB"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("vocabulary"))
    shape = preset(1e8, vocab_size=vocab, seq_len=1024)
    untied = vocabulary_bytes(vocab, shape.d_model, 4 * shape.seq_len, tie_embeddings=shape.tie_embeddings, bf16=True)
    assert f"vocabulary {vocab:,} x d_model {shape.d_model}" in line
    assert f"instead of eager logits' {untied['eager_loss'] / 2**20:,.0f} MiB" in line
    assert f"{(untied['eager_loss'] - untied['fused_loss']) / 2**20:,.0f} MiB avoided" in line
