"""Every third-party module the package imports is a declared dependency (or an extra's, for the
optional backends), so `pip install -e .` on a fresh machine runs the main job: DeepSpeed was once
only in the [dev] extra and every run of the README's first command failed."""

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTION = {"PIL": "pillow", "sklearn": "scikit-learn", "flash_attn": "flash-attn"}  # import name -> distribution


# optional distributions (an extra's) -> the only place of the package that may import them
OPTIONAL = {"flash-attn": "src/fastscale/ops/", "transformers": "src/fastscale/integrations/transformers/",
            "ray": "src/fastscale/sweep/cluster.py"}


def python_files() -> list[Path]:
    return [*(ROOT / "src" / "fastscale").rglob("*.py"), *(ROOT / "kernels").rglob("*.py")]


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def imported_modules() -> set[str]:
    names = set().union(*(imports_of(path) for path in python_files()))
    return {n for n in names if n not in sys.stdlib_module_names and n != "fastscale"}


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_every_imported_module_is_a_declared_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = requirement_names(project["dependencies"])
    optional = requirement_names([r for extra in project["optional-dependencies"].values() for r in extra])
    imported = {DISTRIBUTION.get(name, name).lower() for name in imported_modules()}
    assert {"deepspeed", "torch", "numpy"} <= imported  # the scan sees the package's imports
    assert imported - required <= set(OPTIONAL), f"imported but not dependencies: {sorted(imported - required)}"
    assert set(OPTIONAL) <= optional


def test_optional_dependencies_are_imported_only_where_they_are_optional():
    for distribution, allowed in OPTIONAL.items():
        name = {v: k for k, v in DISTRIBUTION.items()}.get(distribution, distribution)
        importers = {path.relative_to(ROOT).as_posix() for path in python_files() if name in imports_of(path)}
        assert importers and all(p.startswith(allowed) for p in importers), (distribution, sorted(importers))
