"""The evaluation process of one run: `python -m fastscale.sweep.studies RUN_DIR` (see __init__)."""

import sys
from pathlib import Path

from fastscale.io import read_json, write_json

from . import study


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m fastscale.sweep.studies RUN_DIR", file=sys.stderr)
        return 2
    run_dir = Path(argv[0])
    task = read_json(run_dir / "study_task.json", what="the study's task (written by the sweep)")
    result = study(task["kind"]).evaluate(run_dir, Path(task["data_dir"]), task["options"])
    write_json(run_dir / "study.json", {"kind": task["kind"], **result}, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
