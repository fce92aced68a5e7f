import json
from pathlib import Path

import pytest

from medcore.errors import UserError
from medcore.files import (atomic_directory, atomic_path, check_distinct_names, check_replaceable, find_named,
                          input_files, mark_output, read_json, write_json)


def test_atomic_path_replaces_on_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_path(target) as tmp:
        assert tmp != target and tmp.parent == tmp_path and tmp.name.endswith(".txt")
        tmp.write_text("new")
        assert target.read_text() == "old"  # nothing visible before the block ends
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_path_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_atomic_directory(tmp_path):
    target = tmp_path / "case"
    with atomic_directory(target) as staged:
        assert staged.name == "case" and not target.exists()
        (staged / "a.txt").write_text("1")
    assert (target / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as staged:
            (staged / "b.txt").write_text("2")
            raise RuntimeError
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    with atomic_directory(target) as staged:
        (staged / "c.txt").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["c.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case"]


def test_the_plain_core_imports_no_flare():
    """medcore is the plain core: importing all of it loads no nvflare module (the FLARE layer is medflare)."""
    import subprocess
    import sys

    code = ("import sys, pkgutil, importlib, medcore\n"
            "for m in pkgutil.iter_modules(medcore.__path__): importlib.import_module('medcore.' + m.name)\n"
            "print(sorted(n for n in sys.modules if n.split('.')[0] in ('nvflare', 'medflare')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_only_real_byte_code_caches_of_listed_modules_are_the_projects(tmp_path):
    """A folder the project wrote (with its manifest) may be replaced while it holds, beyond its files, only the
    byte-code caches Python writes when it imports them; a file merely named like one is the user's."""
    import importlib.util
    import py_compile
    import sys

    job = tmp_path / "job"
    (job / "pkg").mkdir(parents=True)
    (job / "pkg/mod.py").write_text("X = 1\n")
    mark_output(job, "job", manifest=True)
    cache = Path(importlib.util.cache_from_source(str(job / "pkg/mod.py")))
    py_compile.compile(str(job / "pkg/mod.py"), cfile=str(cache))
    assert cache.parent.name == "__pycache__" and sys.implementation.cache_tag in cache.name
    check_replaceable(job, "job")  # the module and its real cache: the project's
    for name, content in (("pkg/__pycache__/notes.txt", b"mine"), ("mine.pyc", cache.read_bytes()),
                          ("pkg/__pycache__/other.%s.pyc" % sys.implementation.cache_tag, cache.read_bytes()),
                          ("pkg/__pycache__/mod.%s.opt-1.pyc" % sys.implementation.cache_tag, b"not byte code")):
        (job / name).write_bytes(content)
        with pytest.raises(UserError, match=f"{job / name}: not written by this project"):
            check_replaceable(job, "job")
        (job / name).unlink()
    check_replaceable(job, "job")


def test_inputs_are_found_whatever_the_case_of_their_names(tmp_path):
    """``B.TIF`` is a slide like ``a.tif``; ``TEST_001.csv`` is the detections of ``test_001``; two names that differ
    only in case, or two inputs whose outputs would share a name, are refused, naming both."""
    (tmp_path / "sub").mkdir()
    for name in ("a.tif", "B.TIF", "sub/c.Tif", ".hidden.tif", "notes.txt"):
        (tmp_path / name).write_text("x")
    assert [p.name for p in input_files(tmp_path, "*.tif", recursive=True)] == ["B.TIF", "a.tif", "c.Tif"]
    assert [p.name for p in input_files(tmp_path, "*.tif")] == ["B.TIF", "a.tif"]
    (tmp_path / "TEST_001.csv").write_text("x")
    assert find_named(tmp_path, "test_001.csv") == tmp_path / "TEST_001.csv"
    assert find_named(tmp_path, "test_002.csv") is None and find_named(tmp_path / "none", "a.csv") is None
    (tmp_path / "test_001.csv").write_text("y")
    with pytest.raises(UserError, match="TEST_001.csv and test_001.csv differ only in case"):
        find_named(tmp_path, "test_001.csv")
    check_distinct_names([tmp_path / "a.tif", tmp_path / "B.TIF"], "slides", "maps")
    with pytest.raises(UserError, match=r"a.tif and .*sub/A.tif: two slides of one name; their maps"):
        check_distinct_names([tmp_path / "a.tif", tmp_path / "sub/A.tif"], "slides", "maps")


def test_an_unreadable_file_is_one_line_naming_it(tmp_path, monkeypatch):
    """An I/O error or a missing permission while reading a user's file is the user's problem, named, not a bug."""
    path = tmp_path / "results.json"
    path.write_text("{}")

    def failing_read(self, *args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(Path, "read_text", failing_read)
    with pytest.raises(UserError, match=f"{path}: cannot read the cross-site results \\(Input/output error\\)"):
        read_json(path, "cross-site results")


def test_what_an_output_was_made_with_is_compared_by_value():
    from medcore.provenance import check_made_with, differences, digest

    assert differences({"crop": [64, 64, 48], "lr": 0.1}, {"crop": (64, 64, 48), "lr": 0.1}) == []
    assert differences({"lr": 0.1}, {"lr": 0.2, "seed": 3}) == ["lr 0.1 -> 0.2", "seed (not recorded) -> 3"]
    check_made_with("out.json", {"stride": 128, "mode": "tiled"}, {"stride": 128}, "remedy")  # extra keys: fine
    with pytest.raises(UserError, match=r"^out.json: made with other settings than this run's \(stride 128 -> 256\); "
                                        r"pass --overwrite$"):
        check_made_with("out.json", {"stride": 128}, {"stride": 256}, "pass --overwrite")
    with pytest.raises(UserError, match=r"^out.json: made by an earlier version, which did not record its settings; "
                                        r"pass --overwrite$"):
        check_made_with("out.json", None, {"stride": 256}, "pass --overwrite")
    assert digest({"b": 1, "a": [1, 2]}) == digest({"a": [1, 2], "b": 1}) != digest({"a": [2, 1], "b": 1})


def test_a_killed_write_leaves_nothing_the_next_write_keeps(tmp_path):
    """A killed run's hidden work in progress (``.NAME.<hex>.part*``) is removed by the next write of NAME; the
    hidden files of other names, and a user's look-alikes, stay."""
    for name in (".map.npy.1a2b3c4d.part.npy", ".case.0badcafe.part", ".other.npy.1a2b3c4d.part.npy",
                 ".map.npy.notahex1.part.npy", "map.npy.1a2b3c4d.part.npy"):
        (tmp_path / name).mkdir() if name == ".case.0badcafe.part" else (tmp_path / name).write_text("x")
    (tmp_path / ".case.0badcafe.part/case/file.nii.gz").parent.mkdir(parents=True)
    (tmp_path / ".case.0badcafe.part/case/file.nii.gz").write_text("half written")
    with atomic_path(tmp_path / "map.npy") as tmp:
        tmp.write_text("map")
    with atomic_directory(tmp_path / "case") as staged:
        (staged / "file.nii.gz").write_text("done")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".map.npy.notahex1.part.npy", ".other.npy.1a2b3c4d.part.npy", "case", "map.npy", "map.npy.1a2b3c4d.part.npy"]


def test_npy_headers_are_checked_before_the_data_is_read(tmp_path):
    import numpy as np

    from medcore.files import path_problem, read_npy

    np.save(tmp_path / "ok.npy", np.arange(6, dtype=np.float32).reshape(2, 3))
    assert read_npy(tmp_path / "ok.npy").shape == (2, 3)
    (tmp_path / "text.npy").write_text('{"slide": "a.tif"}')
    with pytest.raises(UserError, match=r"text.npy: not a NumPy .npy file \(expected the map\)"):
        read_npy(tmp_path / "text.npy", "map")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="objects.npy: the array holds Python objects and is refused for safety"):
        read_npy(tmp_path / "objects.npy")
    data = (tmp_path / "ok.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:-4])
    with pytest.raises(UserError, match=r"cut.npy: truncated array \(its header promises 24 bytes"):
        read_npy(tmp_path / "cut.npy")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    assert path_problem(tmp_path / "loop") == "a loop of symbolic links"
    assert path_problem(tmp_path / "dangling") == "a symbolic link to a missing target"
    assert path_problem(tmp_path, "file") == "is a folder, not a file"
    assert path_problem(tmp_path / "ok.npy", "folder") == "is a file, not a folder"
    assert path_problem(tmp_path / "none") == "no such file" and path_problem(tmp_path / "ok.npy") is None
