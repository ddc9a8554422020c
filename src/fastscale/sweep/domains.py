"""Across sweeps: `fastscale resolutions OUT` (one grid per image resolution, then their comparison) and
`fastscale frontier DIR` (the compute-efficient frontier's N_opt(C) exponent of every finished sweep
under DIR in one table, beside Henighan et al. 2020's finding that it is nearly the same in every domain).

The library functions (resolution_specs, write_comparison, frontier_rows, write_frontier_table) write files
and return what they wrote; the two run_* functions are the command line and print.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

from fastscale.io import read_json, write_atomically, write_json

# Henighan et al. 2020 (abstract): the compute-optimal model size grows as a power of the compute "with exponents
# that are nearly universal across all data domains" (images, video, image<->text, math), about 0.7.
HENIGHAN_EXPONENT = 0.7
TABLE_STEM = "frontier_table"
WIDEST_TELLING = 1.0  # an interval of a wider than this holds 0.7 and its opposites alike: it cannot tell


# -- resolutions ---------------------------------------------------------------------------------------


def resolution_specs(preset: dict, resolutions=None) -> dict[int, dict]:
    """Resolution -> the sweep of that resolution: the preset's grid (sizes, seeds, training) on its images
    at r x r, seq_len 3 r^2 + 1 (BOS and the image), and the token budgets scaled by the seq_len so each
    resolution trains the same optimizer steps on the same images (with "documents" packing a row is one
    image). resolutions: the preset's study option by default."""
    from .spec import SweepError
    from .studies.resolutions import DEFAULT_RESOLUTIONS, check_resolutions

    study = preset.get("study") or {}
    if study.get("kind") != "resolutions":
        raise SweepError(f"sweep: study={study!r}; expected a resolutions study ({{'kind': 'resolutions', ...}}) for `fastscale resolutions`")
    resolutions = resolutions if resolutions is not None else study.get("resolutions", DEFAULT_RESOLUTIONS)
    check_resolutions(resolutions)
    base = preset["seq_len"]
    specs = {}
    for r in resolutions:
        spec = copy.deepcopy(preset)
        spec["name"] = f"{preset.get('name', 'resolutions')}{r}"
        spec["data"] = {**preset["data"], "resolution": r}
        spec["seq_len"] = 3 * r * r + 1
        spec["tokens_per_item"] = 3 * r * r
        spec["tokens"] = [t * spec["seq_len"] / base for t in preset["tokens"]]
        spec["study"] = {**study, "resolutions": [r]}
        specs[r] = spec
    return specs


def write_comparison(sweep_dirs, out_dir, *, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """OUT/report.json, report.md and resolutions_L_of_N.{png,svg} from the finished sweeps; the comparison."""
    from threadpoolctl import threadpool_limits

    from .studies.resolutions import compare, comparison_markdown, comparison_plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with threadpool_limits(limits=1, user_api="blas"):  # thousands of tiny refits: see sweep.report.build_report
        comparison = compare(sweep_dirs, n_bootstrap, seed)
    comparison["plots"] = comparison_plots(comparison, out_dir)
    write_json(out_dir / "report.json", comparison, indent=2)
    write_atomically(out_dir / "report.md", comparison_markdown(comparison))
    return comparison


def add_resolutions_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", metavar="OUT_DIR", help="OUT_DIR/r{R}: one sweep per resolution (rerun to resume); OUT_DIR/report.md: the comparison")
    p.add_argument("--preset", default="resolutions", help="a preset or sweep JSON file with a resolutions study (default resolutions)")
    p.add_argument("--resolutions", type=int, nargs="+", help="image sides in pixels (default: the preset's, 8 16; 32 takes hours on a CPU)")
    p.add_argument("--jobs", type=int, help="runs at a time (as fastscale sweep)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap draws of the fits (default 1000)")


def run_resolutions(args: argparse.Namespace) -> int:
    from fastscale.fit import FitInputError

    from .command import run_sweep_command
    from .spec import PRESETS, SweepError, SweepSpec

    out = Path(args.out_dir)
    try:
        preset = copy.deepcopy(PRESETS[args.preset]) if args.preset in PRESETS else SweepSpec.load(args.preset).raw
        specs = resolution_specs(preset, args.resolutions)
        for spec in specs.values():
            SweepSpec.from_dict(spec).runs()  # every grid checked before any run starts
    except SweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    for r, spec in specs.items():
        path = out / f"sweep_r{r}.json"
        write_json(path, spec, indent=2)
        print(f"resolution {r}x{r}: {out / f'r{r}'}")
        sweep = argparse.Namespace(out_dir=str(out / f"r{r}"), preset=str(path), jobs=args.jobs, launcher="auto", address=None, no_report=False,
                                   restore_state=False, retrain=(), bootstrap=args.bootstrap, forecast_reducible=None)
        code = run_sweep_command(sweep)
        if code:
            return code
    try:
        comparison = write_comparison([out / f"r{r}" for r in specs], out, n_bootstrap=args.bootstrap)
    except (FileNotFoundError, FitInputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for s in comparison["resolutions"]:
        if "params" in s.get("L_of_N", {}):
            p = s["L_of_N"]["params"]
            print(f"{s['resolution']}x{s['resolution']}: alpha = {p['alpha']:.3f}, L_inf = {p['L_inf']:.4f} nats/token "
                  f"= {s['L_of_N']['per_image']['params']['L_inf']:.1f} nats/image")
    print(f"wrote {out}/report.md, report.json and {len(comparison['plots'])} plots")
    return 0


# -- the frontier across domains -----------------------------------------------------------------------


def frontier_rows(root) -> list[dict]:
    """One row per finished sweep report (report.json with a frontier section) under root, sorted by path:
    approach 1's N_opt(C) exponent from the frontier of learning curves and, for IsoFLOP grids, approach 2's."""
    root = Path(root)
    rows = []
    for path in sorted(root.rglob("report.json")):
        report = read_json(path, what="a sweep report")
        if "frontier" not in report:
            continue  # not a sweep's report (a resolutions comparison)
        where = str(path.parent.relative_to(root)) or "."
        rows.append(_frontier_row(where, report, "frontier of learning curves", report["frontier"]))
        if (report.get("isoflop") or {}).get("N_opt"):
            rows.append(_frontier_row(where, report, "IsoFLOP profiles", report["isoflop"]))
    return rows


def _frontier_row(where: str, report: dict, method: str, section: dict) -> dict:
    row = {"report": where, "sweep": report.get("sweep"), "study": (report.get("study") or {}).get("kind"), "method": method,
           "tokens_per_item": report.get("tokens_per_item")}
    if "error" in section:
        return {**row, "error": section["error"]}
    fit = section["N_opt"]
    return {**row, "a": fit["params"]["a"], "ci": fit["ci"].get("a"), "n_points": fit["n_points"], "flags": fit["flags"]}


def frontier_markdown(rows: list[dict]) -> str:
    lines = ["# The compute-efficient frontier across domains", "",
             "N_opt(C) = (C/C0)^a of every sweep report found: approach 1 fits it to the runs on the frontier of the learning "
             "curves (the smallest loss at each compute), approach 2 to the vertices of IsoFLOP profiles. Henighan et al. 2020 "
             f"found the exponent nearly universal across domains, a ~ {HENIGHAN_EXPONENT}; the column 'holds 0.7' says whether each "
             f"95% bootstrap interval holds that value (not said of an interval wider than {WIDEST_TELLING:g}). These sweeps span one to two decades of N on a CPU, so their intervals "
             "are wide.", "", "| report | sweep | study | method | a [95% interval] | points | holds 0.7 | flags |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        head = f"| {row['report']} | {row['sweep']} | {row['study'] or '-'} | {row['method']} |"
        if "error" in row:
            lines.append(f"{head} no fit: {row['error']} | - | - | - |")
            continue
        low, high = row["ci"] if row["ci"] else (float("nan"), float("nan"))
        holds = "interval too wide to tell" if not high - low <= WIDEST_TELLING else "yes" if low <= HENIGHAN_EXPONENT <= high else "no"
        lines.append(f"{head} {row['a']:.3f} [{low:.3f}, {high:.3f}] | {row['n_points']} | {holds} | {'; '.join(row['flags']) or 'none'} |")
    if not rows:
        lines.append("| (no sweep report found) | | | | | | | |")
    return "\n".join(lines) + "\n"


def write_frontier_table(root, out_dir=None) -> tuple[list[dict], Path]:
    """frontier_table.json and frontier_table.md in out_dir (default root); (the rows, the markdown's path)."""
    rows = frontier_rows(root)
    out = Path(out_dir if out_dir is not None else root)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{TABLE_STEM}.json", {"henighan_exponent": HENIGHAN_EXPONENT, "rows": rows}, indent=2)
    path = out / f"{TABLE_STEM}.md"
    write_atomically(path, frontier_markdown(rows))
    return rows, path


def add_frontier_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", metavar="DIR", help="a folder of finished sweeps (or copies of their report.json), searched recursively")
    p.add_argument("--out", help="where to write frontier_table.md and .json (default DIR)")


def run_frontier(args: argparse.Namespace) -> int:
    if not Path(args.root).is_dir():
        print(f"error: DIR={args.root!r} is not a folder", file=sys.stderr)
        return 2
    rows, path = write_frontier_table(args.root, args.out)
    for row in rows:
        text = f"no fit ({row['error']})" if "error" in row else f"a = {row['a']:.3f} [{row['ci'][0]:.3f}, {row['ci'][1]:.3f}]"
        print(f"{row['report']} ({row['method']}): {text}")
    print(f"{len(rows)} row(s); wrote {path} and {path.with_suffix('.json')}")
    return 0
