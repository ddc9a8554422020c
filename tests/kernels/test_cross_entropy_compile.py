"""Every shipped configuration of the cross-entropy kernels compiles ahead of time for A100 (sm_80)
and H100 (sm_90) with no register spills, within the device's shared memory, on tensor cores."""

import pytest

from fastscale.kernels.aot import report_in_subprocess


@pytest.fixture(scope="module")
def reports():
    return report_in_subprocess("fastscale.kernels.cross_entropy")


def test_every_configuration_compiles_for_both_architectures(reports):
    # forward and backward x fp32, bf16, fp16 x (no bias, no softcap) and (bias, softcap)
    labels = {r["label"] for r in reports}
    assert len(labels) == 2 * 3 * 2
    assert sorted((r["label"], r["arch"]) for r in reports) == sorted((label, arch) for label in labels for arch in (80, 90))


def test_no_spills_and_shared_memory_fits(reports):
    for r in reports:
        assert not r["spills"], f"{r['label']} sm_{r['arch']}: {r['local_bytes']} B local, {r['stack_bytes']} B stack (spills)"
        assert r["fits_shared_memory"], f"{r['label']} sm_{r['arch']}: {r['shared_bytes']} B of shared memory"


def test_half_precision_runs_on_tensor_cores(reports):
    # fp32 inputs use full-precision FMA by design (no silent TF32), so only 16-bit types are checked.
    for r in reports:
        if "fp32" not in r["label"]:
            mma = r["uses_wgmma"] if r["arch"] == 90 else r["uses_mma_sync"]
            assert mma, f"{r['label']} sm_{r['arch']}: no {'wgmma' if r['arch'] == 90 else 'mma.sync'}"
