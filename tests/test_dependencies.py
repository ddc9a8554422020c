"""Every third-party module the package imports is declared, in the core or in the extra that
fastscale/extras.py names for it; the core imports without any extra installed; and a command whose
extra is missing says which `pip install "fastscale[EXTRA]"` to run instead of a traceback."""

import ast
import functools
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from fastscale.extras import EXTRAS, extra_of, missing_extra_message, require

ROOT = Path(__file__).resolve().parents[1]
CORE = {"torch", "triton", "numpy", "scipy", "tqdm"}  # the core, nothing else

# optional distributions (an extra's) -> the only place of the package that may import them
CONFINED = {"flash_attn": "src/fastscale/ops/", "transformers": "src/fastscale/integrations/transformers/", "ray": "src/fastscale/sweep/cluster.py"}


def python_files() -> list[Path]:
    return [*(ROOT / "src" / "fastscale").rglob("*.py"), *(ROOT / "kernels").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@functools.cache
def imports_by_file() -> dict[str, set[str]]:
    return {path.relative_to(ROOT).as_posix(): imports_of(path) for path in python_files()}


def imported_modules() -> set[str]:
    first_party = {"fastscale", *(path.stem for path in (ROOT / "benchmarks").glob("*.py"))}  # the scripts import harness as a sibling
    names = set().union(*imports_by_file().values())
    return {n for n in names if n not in sys.stdlib_module_names and n not in first_party}


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_every_imported_module_is_in_the_core_or_an_extra():
    imported = imported_modules()
    assert {"torch", "numpy", "deepspeed", "matplotlib"} <= imported  # the scan sees the package's imports
    unknown = {name for name in imported - CORE if extra_of(name) is None}
    assert not unknown, f"imported, but neither core nor in fastscale/extras.py: {sorted(unknown)}"


def test_the_core_and_the_extras_are_pyprojects():
    declared = project()
    assert requirement_names(declared["dependencies"]) == CORE
    [triton] = [r for r in declared["dependencies"] if r.startswith("triton")]
    assert re.search(r";\s*sys_platform\s*==\s*['\"]linux['\"]$", triton), triton  # no wheels for macOS or Windows
    extras = declared["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        assert requirement_names(extras[extra]) == set(modules.values()), extra
    assert extras["all"] == ["fastscale[train,report,data]"]
    assert set(extras) == {*EXTRAS, "all", "dev"}


def test_the_core_imports_without_any_extra():
    """Every module of the package (but the Hugging Face integration, which is its extra's) imports with
    each extra's modules made unimportable: an extra's package is imported only where it is used."""
    blocked = sorted(m for modules in EXTRAS.values() for m in modules)
    script = f"""
import importlib, pkgutil, sys
for name in {blocked!r}:
    sys.modules[name] = None  # as if not installed: importing it raises ModuleNotFoundError
import fastscale, fastscale.benchmarks, fastscale.kernels
for package in (fastscale, fastscale.kernels, fastscale.benchmarks):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if not module.name.startswith("fastscale.integrations.transformers"):
            importlib.import_module(module.name)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_fastscale_fit_runs_on_the_core_alone(rng, tmp_path):
    """The numpy/scipy fitting layer needs no extra, and no torch: a noiseless power law comes back."""
    blocked = sorted(m for modules in EXTRAS.values() for m in modules)
    l_inf, x0, alpha = rng.uniform(1.0, 3.0), 10 ** rng.uniform(3, 5), rng.uniform(0.2, 0.5)
    n = np.geomspace(1e5, 1e9, 9) * rng.uniform(0.8, 1.25, 9)
    csv = tmp_path / "runs.csv"
    csv.write_text("N,loss\n" + "".join(f"{x:.17g},{l_inf + (x0 / x) ** alpha:.17g}\n" for x in n))
    script = f"""
import sys
for name in {blocked!r}:
    sys.modules[name] = None
from fastscale.cli import main
code = main(sys.argv[1:])
assert "torch" not in sys.modules, "fastscale fit imported torch"
sys.exit(code)
"""
    done = subprocess.run([sys.executable, "-c", script, "fit", str(csv), "--law", "power", "--bootstrap", "0", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    params = json.loads(done.stdout)["params"]
    assert params["L_inf"] == pytest.approx(l_inf, rel=1e-6) and params["x0"] == pytest.approx(x0, rel=1e-5)
    assert params["alpha"] == pytest.approx(alpha, rel=1e-6)


def test_optional_dependencies_are_imported_only_where_they_are_optional():
    for name, allowed in CONFINED.items():
        # the benchmarks import their baselines too: `fastscale bench` says which are missing
        importers = {path for path, names in imports_by_file().items() if name in names and not path.startswith("benchmarks/")}
        assert importers and all(p.startswith(allowed) for p in importers), (name, sorted(importers))


# made unimportable in a fresh interpreter that then runs `fastscale ARGS`
MISSING = """
import sys
sys.modules[sys.argv[1]] = None
from fastscale.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("module, extra, command", [
    ("deepspeed", "train", "train --config RUN.json --deepspeed_config DS.json --out {out}"),  # checked before the run starts
    ("deepspeed", "train", "sweep {out} --no-report"),  # before any trainer process is started
    ("pydantic", "train", "train --config RUN.json --deepspeed_config DS.json --out {out}"),
    ("matplotlib", "report", "report {out}"),
    ("sklearn", "data", "data digits --out {out}"),  # raised where the bundled digits are loaded
])
def test_a_missing_extra_names_its_pip_install(module, extra, command, tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", MISSING, module, *command.format(out=out).split()], capture_output=True, text=True, timeout=120)
    distribution = EXTRAS[extra][module]
    name = command.split()[0]
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == f'error: fastscale {name} needs {distribution}, which is not installed: pip install "fastscale[{extra}]"'
    assert "Traceback" not in done.stderr
    assert not out.exists()


def test_train_py_without_deepspeed_names_its_pip_install(tmp_path):
    script = f"import runpy, sys; sys.modules['deepspeed'] = None; sys.argv = sys.argv[1:]; runpy.run_path({str(ROOT / 'train.py')!r}, run_name='__main__')"
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", script, "train.py", "--config", "RUN.json", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip() == 'error: train.py needs deepspeed, which is not installed: pip install "fastscale[train]"'
    assert not out.exists()


def test_only_an_uninstalled_extra_is_blamed_on_its_extra(monkeypatch):
    core = ModuleNotFoundError("No module named 'scipy'", name="scipy")
    assert missing_extra_message(core, "fastscale fit") is None  # the traceback is the better message
    inside = ModuleNotFoundError("No module named 'deepspeed.nonexistent'", name="deepspeed.nonexistent")
    assert missing_extra_message(inside, "fastscale train") is None  # DeepSpeed is installed: a version mismatch, not a missing extra
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    assert missing_extra_message(inside, "fastscale train") == 'fastscale train needs deepspeed, which is not installed: pip install "fastscale[train]"'
    with pytest.raises(ValueError, match="extra='trian': expected one of train, report, data"):
        require("trian", "fastscale train")
