"""Nothing a DeepSpeed config says writes outside the run directory.

A DeepSpeed config can name files DeepSpeed writes (checked against deepspeed 0.19's config models and
engine): the monitors' `tensorboard` / `csv_monitor` `output_path` and `job_name` (the files go to
output_path/job_name; an empty output_path means the launching directory), `flops_profiler.output_file`,
`autotuning`'s `results_dir`, `exps_dir`, `metric_path` and `model_info_path`, the offload swap
directories `zero_optimization.offload_{optimizer,param}.nvme_path`, and paths it reads
(`data_efficiency` / `curriculum_learning` `*_path`). Since a sweep file's DeepSpeed section reaches
every run's config, these are decided here, in the Trainer (the Python API, train.py and the sweep all
build one):

- every setting whose key names a path (`path`, `*_path`, `*_paths`, `*_file`, `*_dir`, `*_folder`, in
  any section, so keys we do not list are covered too) resolves inside the run directory: a relative
  value is taken under it, then symlinks are resolved; `..`, `~`, an absolute path or a symlink that
  lands outside is refused with a ConfigError naming the key, the value and where it resolves; the
  config DeepSpeed gets holds the resolved absolute path (its working directory may be anywhere);
- an enabled tensorboard or csv_monitor without an output_path writes to RUN_DIR/monitor, not the
  launching directory; `job_name` (a directory under output_path) must be one plain name;
- `autotuning.enabled` is refused: it is DeepSpeed's autotuner protocol (the run exits after its
  profiling steps, writing JSON to the working directory), run by `deepspeed --autotuning`, not training;
- `nvme_path` is the one exception: a swap directory on a fast disk, legitimately outside the run
  directory (DeepSpeed clears and refills nvme_path/zero_stage_*/ there). A relative one is confined
  like any path; an absolute one is kept, and logged, when it comes from the user's own DeepSpeed config
  (train.py --deepspeed_config, the Python API). A sweep refuses nvme offload altogether
  (fastscale.sweep.devices): its runs would share one swap directory.
- wandb and comet write their local files where their environment says (WANDB_DIR,
  COMET_OFFLINE_DIRECTORY); unset, the working directory, so an enabled one gets the run directory.
"""

from __future__ import annotations

import copy
import logging
import os
import re
from pathlib import Path

from .config import ConfigError

logger = logging.getLogger(__name__)

WHERE = "deepspeed config"
PATH_KEY = re.compile(r"(^|_)(path|paths|file|dir|folder)$")
MONITORS = ("tensorboard", "csv_monitor")
MONITOR_DIR = "monitor"
# the directory a monitor library puts its local files in, from the environment, unset: the working directory
LOCAL_DIR_VARIABLES = {"wandb": "WANDB_DIR", "comet": "COMET_OFFLINE_DIRECTORY"}


def confine_deepspeed_config(ds: dict, run_dir) -> dict:
    """A copy of ds in which every file DeepSpeed would write lies inside run_dir (module docstring);
    raises ConfigError for a setting that cannot be made to."""
    root = Path(os.path.realpath(run_dir))
    ds = copy.deepcopy(ds)
    if (ds.get("autotuning") or {}).get("enabled"):
        raise ConfigError(f"{WHERE}: autotuning.enabled=true starts DeepSpeed's autotuner protocol (the run exits after its profiling "
                          "steps and writes to the working directory); run `deepspeed --autotuning` for that, or remove the section")
    for name in MONITORS:
        section = ds.get(name) or {}
        if section.get("enabled") and not section.get("output_path"):
            section["output_path"] = MONITOR_DIR
        if "job_name" in section:
            _check_plain_name(f"{name}.job_name", section["job_name"])
    _confine_paths(ds, root, "")
    return ds


def direct_monitor_files(ds: dict, run_dir) -> None:
    """In the training process: an enabled wandb or comet writes its local files into run_dir unless
    the environment already says where (a process-wide setting, so never called from a sweep driver)."""
    for name, variable in LOCAL_DIR_VARIABLES.items():
        if (ds.get(name) or {}).get("enabled") and variable not in os.environ:
            os.environ[variable] = os.path.realpath(run_dir)


def _check_plain_name(key: str, value) -> None:
    if not isinstance(value, str) or value in ("", ".", "..") or "/" in value or "\\" in value:
        raise ConfigError(f"{WHERE}: {key}={value!r}; expected a plain directory name (no '/', not '..'): it is a directory "
                          "made under output_path, inside the run directory")


def _confine_paths(section: dict, root: Path, prefix: str) -> None:
    for key, value in section.items():
        where = f"{prefix}{key}"
        if isinstance(value, dict):
            _confine_paths(value, root, f"{where}.")
        elif PATH_KEY.search(key) and isinstance(value, str) and value:
            section[key] = _inside(where, value, root)
        elif PATH_KEY.search(key) and isinstance(value, list):
            section[key] = [_inside(f"{where}[{i}]", item, root) if isinstance(item, str) and item else item for i, item in enumerate(value)]


def _inside(key: str, value: str, root: Path) -> str:
    """value resolved under root (symlinks followed); refused if it lands outside root."""
    path = Path(os.path.expanduser(value))
    if key.endswith("nvme_path") and path.is_absolute():
        logger.info("%s: %s=%s swaps outside the run directory %s (a fast disk of the user's choice)", WHERE, key, value, root)
        return value
    resolved = Path(os.path.realpath(root / path))
    if resolved != root and root not in resolved.parents:
        raise ConfigError(f"{WHERE}: {key}={value!r} resolves to {resolved}, outside the run directory {root}; DeepSpeed's output "
                          "settings must stay inside it (use a path relative to the run directory)")
    return str(resolved)
