"""Which optional dependency comes with which extra of `pip install "fastscale[EXTRA]"`, and the error
a missing one gives.

The core (torch, triton, numpy, scipy, tqdm) runs the kernels, the model and `fastscale fit`; each
extra adds what one job needs: DeepSpeed for training, matplotlib for the report's plots, scikit-learn
and Pillow for the bundled data and images, and so on. The modules of an extra are imported where they
are used, never at the top of a module the core imports, so a missing one fails only the job that
needs it. `missing_extra_message` turns that job's ModuleNotFoundError into a message naming the extra
to install (the command line prints it); `require` checks an extra up front, without importing it, for
the commands that always need it and would otherwise fail late or inside a child process.
"""

from __future__ import annotations

import importlib.util

# extra -> {import name: distribution} of pyproject.toml's [project.optional-dependencies]
EXTRAS = {
    "train": {"deepspeed": "deepspeed", "pydantic": "pydantic"},
    "report": {"matplotlib": "matplotlib", "threadpoolctl": "threadpoolctl"},
    "data": {"sklearn": "scikit-learn", "PIL": "pillow", "tokenizers": "tokenizers"},
    "hf": {"transformers": "transformers", "accelerate": "accelerate"},
    "cluster": {"ray": "ray"},
    "bench": {"liger_kernel": "liger-kernel", "cut_cross_entropy": "cut-cross-entropy"},
    "flash": {"flash_attn": "flash-attn"},
}


class MissingExtraError(ModuleNotFoundError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def extra_of(module: str) -> str | None:
    """The extra that installs `module` (an import name, dotted or not), or None for the core and
    for modules fastscale does not know."""
    top = module.split(".")[0]
    return next((extra for extra, modules in EXTRAS.items() if top in modules), None)


def _message(module: str, extra: str, needed_by: str) -> str:
    return f'{needed_by} needs {EXTRAS[extra][module]}, which is not installed: pip install "fastscale[{extra}]"'


def missing_extra_message(error: ModuleNotFoundError, needed_by: str) -> str | None:
    """What to tell the user when `error` is an optional dependency missing, or None when it is not
    one: a missing core dependency, or a module missing inside an installed package (a version
    mismatch or a bug), where the traceback says more than a message would."""
    if isinstance(error, MissingExtraError):
        return str(error)
    top = (error.name or "").split(".")[0]
    extra = extra_of(top)
    if extra is None or importlib.util.find_spec(top) is not None:
        return None
    return _message(top, extra, needed_by)


def require(extra: str, needed_by: str) -> None:
    """Raises MissingExtraError unless every module of `extra` is installed; finds them without
    importing them (DeepSpeed takes seconds to import)."""
    if extra not in EXTRAS:
        raise ValueError(f"extra={extra!r}: expected one of {', '.join(EXTRAS)}")
    for module in EXTRAS[extra]:
        if importlib.util.find_spec(module) is None:
            raise MissingExtraError(_message(module, extra, needed_by), name=module)
