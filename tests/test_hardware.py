"""The hardware table against the vendors' datasheet numbers (written here independently of it, and
against kernels/roofline.py's model of the same GPUs from SMs x clock), and the /proc/cpuinfo parser."""

import pytest

from fastscale import hardware
from fastscale.kernels import roofline

# Device names as torch.cuda.get_device_name reports them -> (dense TFLOP/s, TB/s): the datasheets'
# "with sparsity" bf16 figure halved where they print that one.
DATASHEET = {
    "NVIDIA H100 80GB HBM3": (1979 / 2, 3.35),
    "NVIDIA H100 NVL": (1671 / 2, 3.9),
    "NVIDIA H100 PCIe": (1513 / 2, 2.0),
    "NVIDIA H200": (1979 / 2, 4.8),
    "NVIDIA H200 NVL": (1671 / 2, 4.8),
    "NVIDIA B200": (4500 / 2, 8.0),
    "NVIDIA GB200": (5000 / 2, 8.0),
    "NVIDIA A100-SXM4-80GB": (312, 2.039),
    "NVIDIA A100 80GB PCIe": (312, 1.935),
    "NVIDIA A100-SXM4-40GB": (312, 1.555),
    "NVIDIA A100-PCIE-40GB": (312, 1.555),
    "NVIDIA L40S": (733 / 2, 0.864),
    "NVIDIA L40": (362.1 / 2, 0.864),
    "NVIDIA L4": (242 / 2, 0.3),
    "NVIDIA A10": (250 / 2, 0.6),
    "Tesla V100-SXM2-16GB": (125, 0.9),
    "Tesla V100-PCIE-32GB": (112, 0.9),
    "Tesla T4": (65, 0.32),
}


@pytest.mark.parametrize("name", sorted(DATASHEET))
def test_each_device_finds_its_own_row(name):
    row = hardware.accelerator(name)
    tflops, tb_per_s = DATASHEET[name]
    assert row.tflops == pytest.approx(tflops, rel=2e-3), row.source
    assert row.tb_per_s == pytest.approx(tb_per_s, rel=1e-3), row.source


def test_unknown_and_uncited_devices_have_no_peak():
    assert hardware.accelerator("Quadro P400") is None
    row = hardware.accelerator("NVIDIA A10G")  # AWS's part: must not borrow the A10's peak
    assert row.flops is None and "FASTSCALE_PEAK_FLOPS" in row.source


def test_table_agrees_with_the_roofline_model():
    for name, gpu in (("NVIDIA H100 80GB HBM3", roofline.H100_SXM), ("NVIDIA A100-SXM4-80GB", roofline.A100_SXM)):
        row = hardware.accelerator(name)
        assert row.flops == pytest.approx(gpu.tensor_flops, rel=1e-9)
        assert row.tb_per_s * 1e12 == pytest.approx(gpu.hbm_bytes_per_s, rel=1e-9)


CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz
cpu MHz\t\t: 2200.150
flags\t\t: fpu sse sse2 avx avx2 fma

processor\t: 1
model name\t: some other core
cpu MHz\t\t: 800.000
flags\t\t: fpu sse avx512f
"""


def test_cpuinfo_reads_the_first_processor(tmp_path, monkeypatch):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    monkeypatch.setattr(hardware, "CPUINFO", str(path))
    monkeypatch.setattr(hardware, "usable_cores", lambda: 3)
    assert hardware.cpu_model() == "Intel(R) Xeon(R) CPU @ 2.20GHz"
    peak, description = hardware.cpu_peak()
    assert peak == pytest.approx(3 * 2.20015e9 * 2 * 8 * 2)  # AVX2: 8 fp32 lanes, 2 FMA units, 2 FLOPs per FMA
    assert "AVX2" in description and "3 cores" in description


def test_cpu_without_cpuinfo_still_answers(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "CPUINFO", str(tmp_path / "missing"))
    monkeypatch.setattr(hardware, "usable_cores", lambda: 2)
    assert hardware.cpuinfo() == {} and hardware.cpu_model()
    peak, description = hardware.cpu_peak()
    assert peak == pytest.approx(2 * 2.0e9 * 2 * 4 * 2) and "assumed" in description
