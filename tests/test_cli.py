"""The `fastscale` command line itself: --version, a --help for users that imports nothing heavy, every
option explained with its default, Ctrl-C in any command one line and exit 130."""

import argparse
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

import fastscale
from fastscale import cli
from fastscale.benchmarks import bench_attention, bench_cross_entropy

ROOT = Path(__file__).resolve().parents[1]
# what `--help` must not import: seconds of start-up (torch, triton, DeepSpeed) or an extra's package
HEAVY = {"torch", "triton", "scipy", "deepspeed", "matplotlib", "sklearn", "PIL", "tokenizers", "pydantic", "threadpoolctl", "ray", "transformers"}
# prints the help of sys.argv[1:] on stdout, then the top-level modules it imported on stderr
HELP_PROBE = """
import sys
from fastscale import cli
try:
    cli.main(sys.argv[1:])
except SystemExit as exit:
    assert exit.code == 0, exit.code
print(*sorted({name.split(".")[0] for name in sys.modules}), file=sys.stderr)
"""


def parsers():
    """(command, parser) of fastscale, each subcommand and the benchmarks' own."""
    found = [("fastscale", cli.build_parser())]
    for action in found[0][1]._actions:
        if isinstance(action, argparse._SubParsersAction):
            found += [(f"fastscale {name}", parser) for name, parser in action.choices.items()]
    return found + [("fastscale bench attention", bench_attention.build_parser())]


def test_version_is_written_once(capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.strip() == f"fastscale {fastscale.__version__}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "fastscale.__version__"}
    assert metadata.version("fastscale") == fastscale.__version__  # what pip installed is what the package says


@pytest.mark.parametrize("command", [None, *cli.COMMANDS])
def test_help_imports_nothing_heavy(command):
    """`fastscale --help` imports no command's module, `fastscale COMMAND --help` only that command's
    argument definitions: a fresh interpreter, as a user's shell starts it."""
    argv = [command, "--help"] if command else ["--help"]
    done = subprocess.run([sys.executable, "-c", HELP_PROBE, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: fastscale" in done.stdout and "--help" in done.stdout
    imported = set(done.stderr.strip().splitlines()[-1].split())  # the probe's last line
    assert {"fastscale", "argparse"} <= imported
    assert not imported & HEAVY, f"fastscale {' '.join(argv)} imported {sorted(imported & HEAVY)}"


def test_help_is_written_for_users(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert "fastscale sweep runs/image8" in text and "fastscale COMMAND --help" in text
    assert "this module prints" not in text


@pytest.mark.parametrize("command, parser", parsers(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_option_has_help_and_shows_its_default(command, parser, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps at the terminal's width, hyphens included
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
            continue
        assert action.help, f"{command} {'/'.join(action.option_strings) or action.dest} has no help"
    text = parser.format_help()
    for action in parser._actions:
        shown = action.option_strings and action.default not in (None, False, (), [], argparse.SUPPRESS)
        if shown and "default" not in (action.help or ""):
            assert f"(default: {action.default})" in text, f"{command} {action.option_strings[0]}"


def test_cross_entropy_bench_options_show_their_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit):
        bench_cross_entropy.parse_args(["--help"])
    text = capsys.readouterr().out
    for option, default in (("--tokens", 4096), ("--d", 1024), ("--vocab", 131072), ("--repeats", 3)):
        assert f"{option} {option[2:].upper()} " in text and f"(default: {default})" in text


def test_ctrl_c_in_any_command_is_one_line_and_exit_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    from fastscale.sweep import command

    monkeypatch.setattr(command, "run_report_command", interrupted)
    assert cli.main(["report", "no-such-sweep"]) == 130
    printed = capsys.readouterr()
    assert printed.err.strip() == "interrupted: fastscale report" and "Traceback" not in printed.err


def test_sweep_refuses_a_ray_address_without_the_ray_launcher(tmp_path, capsys):
    assert cli.main(["sweep", str(tmp_path / "s"), "--address", "auto", "--no-report"]) == 2
    assert "address='auto' is the Ray cluster's; it needs launcher='ray', got launcher='auto'" in capsys.readouterr().err
    assert not (tmp_path / "s" / "results.json").exists()
