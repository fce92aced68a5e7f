import json

import pytest

from medcore.files import atomic_directory, atomic_path, write_json


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
