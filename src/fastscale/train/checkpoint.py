"""Atomic checkpoints on top of DeepSpeed's.

DeepSpeed writes a tag directory (model and optimizer shards of every rank); fastscale then adds each
rank's RNG state and, once every rank has finished (barrier), a COMPLETE marker written by rename.
Only tags with the marker are ever loaded, so a checkpoint torn by a kill is never picked; older
complete tags beyond `keep` are deleted after a new one is complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

TAG = re.compile(r"^step(\d{8})$")
MARKER = "COMPLETE"


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def complete_tags(directory: str | os.PathLike) -> list[tuple[int, str]]:
    """(step, tag) of every complete checkpoint under directory, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        match = TAG.match(entry.name)
        if match and (entry / MARKER).is_file():
            found.append((int(match.group(1)), entry.name))
    return sorted(found)


def latest_complete(directory) -> tuple[int, str] | None:
    tags = complete_tags(directory)
    return tags[-1] if tags else None


def mark_complete(directory: Path, tag: str, info: dict, keep: int) -> None:
    """Rank 0, after every rank wrote its part: the marker, DeepSpeed's `latest` file, and pruning."""
    atomic_write_text(directory / tag / MARKER, json.dumps(info))
    atomic_write_text(directory / "latest", tag)
    for _, old in complete_tags(directory)[:-keep]:
        shutil.rmtree(directory / old, ignore_errors=True)
