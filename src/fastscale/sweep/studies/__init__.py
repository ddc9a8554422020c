"""Studies from the seed papers: what a sweep measures beyond L(N), L(C) and the noise scale.

A sweep file's optional `"study": {"kind": KIND, ...options}` names one. Each study is a module here
with DOMAINS, the fastscale.data domains it can measure (checked against the sweep's data before any
run starts), and five functions:

    check(options: dict) -> None
        raise SweepError (naming the option, its value and what was expected) before any run starts
    evaluate(run_dir: Path, data_dir: Path, options: dict) -> dict
        torch side, in its own process after the run trained: loads the trained model
        (fastscale.sweep.evaluation.load_trained) and returns JSON-ready measurements
    report(runs: list[dict], options: dict, n_bootstrap: int, seed: int) -> dict
        numpy/scipy/fastscale.fit only (no torch): the evaluated runs (at least one) as
        fastscale.sweep.report.load_runs gives them, each with run["study"] = what evaluate returned;
        returns the JSON-ready section (fastscale.sweep.report.study_section names the runs left out)
    markdown(section: dict) -> list[str]
        the report.md lines of the section
    plots(section: dict, out_dir: Path) -> list[str]
        draws the section's figures (PNG and SVG) into out_dir; returns the file names

`python -m fastscale.sweep.studies RUN_DIR` is the evaluation process: it reads RUN_DIR/study_task.json
({"kind", "options", "data_dir"}) and writes RUN_DIR/study.json atomically.
"""

from __future__ import annotations

import importlib

KINDS = ("multimodal", "math", "classify", "text", "video", "resolutions")


def study(kind: str):
    """The module of a study kind."""
    from fastscale.sweep.spec import SweepError

    if kind not in KINDS:
        raise SweepError(f"sweep: study.kind={kind!r}; expected one of {KINDS}")
    return importlib.import_module(f"fastscale.sweep.studies.{kind}")
