"""One compile of every shipped kernel configuration per session, read by the compile report's tests
and the roofline's (compiling is most of their time)."""

import pytest


@pytest.fixture(scope="session")
def shipped_reports() -> list[dict]:
    """fastscale.kernels.aot.report(): every shipped configuration for sm_80, sm_90 and sm_100, compiled
    in two worker processes."""
    from fastscale.kernels import aot

    return aot.report()
