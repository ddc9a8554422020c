"""fastscale.io.atomic_directory: a directory appears whole at its path or not at all."""

import os

import pytest

from fastscale.io import atomic_directory


def _siblings(path):
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


def test_new_directory_appears_with_its_files_and_nothing_beside_it(tmp_path):
    target = tmp_path / "deep" / "shard"
    with atomic_directory(target) as work:
        assert not target.exists() and work.parent == target.parent
        (work / "a.txt").write_text("new")
    assert (target / "a.txt").read_text() == "new"
    assert _siblings(target) == []


def test_previous_version_is_replaced_whole(tmp_path):
    target = tmp_path / "shard"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_directory(target) as work:
        (work / "new.txt").write_text("new")
        assert (target / "old.txt").read_text() == "old"  # readers see the previous version until the end
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert _siblings(target) == []


def test_failure_leaves_the_previous_version_and_no_temporary(tmp_path):
    target = tmp_path / "shard"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(ValueError, match="half written"):
        with atomic_directory(target) as work:
            (work / "new.txt").write_text("partial")
            raise ValueError("half written")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert _siblings(target) == []


def test_a_leftover_temporary_of_this_process_is_cleared(tmp_path):
    target = tmp_path / "shard"
    stale = tmp_path / f".shard.tmp-{os.getpid()}"
    stale.mkdir()
    (stale / "stale.txt").write_text("from a killed attempt")
    with atomic_directory(target) as work:
        assert list(work.iterdir()) == []
        (work / "a.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
