import json
from pathlib import Path

import pytest

from medcore.errors import UserError
from medcore.files import atomic_directory, atomic_path, check_replaceable, mark_output, write_json


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
