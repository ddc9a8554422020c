"""linear_cross_entropy's target-range check: a ValueError where reading the targets on the host costs
nothing (CPU, eagerly) or FASTSCALE_DEBUG=1 asks for it; elsewhere (CUDA, torch.compile) on the device
with no host read, out-of-range targets making the loss NaN."""

import importlib

import pytest
import torch
import torch.nn.functional as F

from fastscale.ops import linear_cross_entropy

op = importlib.import_module("fastscale.ops.cross_entropy")
HOST_READS = ("aten._local_scalar_dense.default", "aten.item.default")
VOCAB = 11


def inputs():
    hidden = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(VOCAB, 6, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, VOCAB, (9,))
    targets[2] = -100
    return hidden, weight, targets


@pytest.mark.parametrize("device,debug,on_host", [("cpu", None, True), ("meta", None, False), ("meta", "1", True), ("cpu", "0", True)])
def test_where_the_range_is_checked(monkeypatch, device, debug, on_host):
    """The meta device stands for CUDA: any device but the CPU's."""
    if debug is None:
        monkeypatch.delenv("FASTSCALE_DEBUG", raising=False)
    else:
        monkeypatch.setenv("FASTSCALE_DEBUG", debug)
    assert op._targets_checked_on_host(torch.zeros(3, dtype=torch.long, device=device)) is on_host


@pytest.mark.parametrize("bad", [VOCAB, -1])
def test_debug_mode_raises_on_the_device_path_too(monkeypatch, bad):
    monkeypatch.setenv("FASTSCALE_DEBUG", "1")
    hidden, weight, targets = inputs()
    targets[4] = bad
    with pytest.raises(ValueError, match=f"targets: value {bad} is outside \\[0, {VOCAB}\\) and is not ignore_index \\(-100\\)"):
        linear_cross_entropy(hidden, weight, targets)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_device_check_reads_nothing_and_makes_the_loss_nan(monkeypatch, recorder, reduction):
    monkeypatch.setattr(op, "_targets_checked_on_host", lambda targets: False)
    hidden, weight, targets = inputs()
    targets[4] = VOCAB
    with recorder:
        loss = linear_cross_entropy(hidden, weight, targets, reduction=reduction)
        loss.sum().backward()
    assert "aten.mul.Tensor" in recorder.ops and not set(HOST_READS) & set(recorder.ops)
    if reduction == "none":
        fine = torch.arange(9) != 4
        reference = F.cross_entropy(hidden[fine] @ weight.T, targets[fine], reduction="none")
        torch.testing.assert_close(loss[fine], reference, rtol=1e-12, atol=1e-12)
        assert loss[4].isnan() and hidden.grad[4].isnan().all() and not hidden.grad[fine].isnan().any()
    else:
        assert loss.isnan() and hidden.grad.isnan().all() and weight.grad.isnan().all()


def test_device_check_leaves_valid_targets_alone(monkeypatch):
    monkeypatch.setattr(op, "_targets_checked_on_host", lambda targets: False)
    hidden, weight, targets = inputs()
    loss = linear_cross_entropy(hidden, weight, targets)
    loss.backward()
    reference = F.cross_entropy(hidden @ weight.T, targets)
    torch.testing.assert_close(loss, reference, rtol=1e-12, atol=1e-12)
    assert not hidden.grad.isnan().any()


def test_under_compile_the_check_is_on_the_device():
    hidden, weight, targets = inputs()
    targets[4] = VOCAB
    compiled = torch.compile(linear_cross_entropy, fullgraph=True, backend="aot_eager")
    assert compiled(hidden, weight, targets).isnan()
    targets[4] = 3
    torch.testing.assert_close(compiled(hidden, weight, targets), F.cross_entropy(hidden @ weight.T, targets))
