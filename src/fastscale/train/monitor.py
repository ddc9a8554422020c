"""Experiment tracking: the run config's "monitor" section feeds DeepSpeed's monitor (TensorBoard,
Weights & Biases, CSV, Comet) with the numbers of every metrics.jsonl record.

The section holds DeepSpeed's own monitor sections ({"csv_monitor": {"enabled": true}, ...}), given to
`deepspeed.monitor.MonitorMaster` as they are, except that they are confined to the run directory like
the DeepSpeed config's (fastscale.train.confinement: files under RUN_DIR/monitor unless output_path says
where inside it) and that Weights & Biases runs offline unless the section says "mode": "online" (an
experiment is never uploaded by surprise; `wandb sync RUN_DIR/wandb/...` uploads it later). Each
record's finite numbers go out as ("Train/<field>", value, step), on rank 0, when metrics.jsonl gets
the record: the same values at the same steps.
"""

from __future__ import annotations

import importlib.util
import math
import os

from .config import ConfigError
from .confinement import confine_deepspeed_config, direct_monitor_files

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "comet": "comet_ml"}  # what each monitor imports


def enabled_sections(sections: dict | None) -> dict:
    return {name: dict(section) for name, section in (sections or {}).items() if section.get("enabled")}


def check_sections(sections: dict) -> None:
    """A ConfigError for an enabled monitor whose package is missing (naming it and how to install it) or
    whose section DeepSpeed's config model refuses (an unknown or mistyped field)."""
    from deepspeed.monitor.config import get_monitor_config
    from pydantic import ValidationError

    enabled = enabled_sections(sections)
    for name in enabled:
        package = PACKAGES.get(name)
        if package and importlib.util.find_spec(package) is None:
            raise ConfigError(f"run config: monitor.{name}.enabled=true needs the {package} package (pip install {package})")
    enabled.get("wandb", {}).pop("mode", None)
    try:
        get_monitor_config(enabled)
    except ValidationError as error:
        faults = "; ".join(f"monitor.{'.'.join(map(str, e['loc']))}={e.get('input')!r}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"run config: {faults} (DeepSpeed's monitor config)") from None


class Monitor:
    """DeepSpeed's MonitorMaster for the enabled sections; write(record) sends one metrics record."""

    def __init__(self, sections: dict, run_dir) -> None:
        from deepspeed.monitor.config import get_monitor_config
        from deepspeed.monitor.monitor import MonitorMaster

        sections = confine_deepspeed_config(enabled_sections(sections), run_dir)
        wandb = sections.get("wandb")
        if wandb is not None:
            # the training process's own setting, like WANDB_DIR (direct_monitor_files); a value already
            # in the environment is the user's choice and wins
            os.environ.setdefault("WANDB_MODE", wandb.pop("mode", "offline"))
        direct_monitor_files(sections, run_dir)
        self.master = MonitorMaster(get_monitor_config(sections))

    def write(self, record: dict) -> None:
        step = record["step"]
        events = [(f"Train/{key}", float(value), step) for key, value in record.items() if key != "step" and _finite_number(value)]
        self.master.write_events(events)


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
