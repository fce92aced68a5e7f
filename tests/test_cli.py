import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from brats_fl import cli as brats_cli
from metastasis import cli as metastasis_cli
from tests.support import REPO



@pytest.mark.parametrize("module", [brats_cli, metastasis_cli])
def test_help_explains_every_option(module, capsys):
    parser = module.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert len(commands) >= 8
    for command in commands:
        with pytest.raises(SystemExit) as done:
            parser.parse_args([command, "--help"])
        assert done.value.code == 0
        text = capsys.readouterr().out
        sub = parser._subparsers._group_actions[0].choices[command]
        handler = sub.get_default("func")
        if handler.__module__ == module.__name__:  # the task's own commands: described by their handler
            assert sub.description == inspect.getdoc(handler), command
            assert " ".join(sub.description.split())[:60] in " ".join(text.split()), command
        for action in sub._actions:
            if action.help is not None and action.dest != "help":
                assert action.help and action.help in " ".join(text.split()) or action.help[:20] in text


def test_console_scripts_installed():
    bindir = Path(sys.executable).parent
    for name in ("brats-fl", "metastasis"):
        out = subprocess.run([str(bindir / name), "--help"], capture_output=True, text=True, check=True).stdout
        assert "COMMAND" in out


def test_brats_make_and_check(tmp_path, capsys):
    assert brats_cli.main(["make-data", "--out", str(tmp_path), "--hgg", "1", "--lgg", "1",
                           "--shape", "32", "32", "24"]) == 0
    assert brats_cli.main(["check-data", str(tmp_path)]) == 0
    seg = next(tmp_path.rglob("*_seg.nii.gz"))
    seg.write_bytes(b"broken")
    assert brats_cli.main(["check-data", str(tmp_path)]) == 1
    assert f"{seg}: not a readable NIfTI" in capsys.readouterr().err
    assert brats_cli.main(["check-data", str(tmp_path / "missing")]) == 2


def test_metastasis_make_data(tmp_path):
    assert metastasis_cli.main(["make-data", "--out", str(tmp_path), "--tumor", "0", "--normal", "1",
                                "--width", "1024", "--height", "768"]) == 0
    assert (tmp_path / "training/normal/normal_001.tif").is_file()
    assert metastasis_cli.main(["make-data", "--out", str(tmp_path), "--tile", "100"]) == 2


@pytest.mark.slow
def test_make_demo_recipe(tmp_path):
    """`make demo` as the Makefile runs it (data, datalists, derived job, FLARE simulator, report), at a tiny size."""
    demo = tmp_path / "demo"
    result = subprocess.run(
        ["make", "-C", str(REPO), "demo", f"DEMO_DIR={demo}", "DEMO_HGG=3", "DEMO_LGG=3", "DEMO_SHAPE=32 32 24",
         "DEMO_ROUNDS=2"], capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert len(list((demo / "brats").glob("*/*/*_seg.nii.gz"))) == 6
    assert (demo / "brats/datalists/seg_brats18_datalist_client_a.json").is_file()
    assert "Global best model selected via IntimeModelSelector" in result.stdout
    assert "  AVE:    TC:" in result.stdout
    assert (demo / "report/report.csv").is_file() and (demo / "report/training_curves.png").is_file()


@pytest.mark.slow
def test_make_pathology_demo_recipe(tmp_path):
    """`make pathology-demo` as the Makefile runs it (both parts: slides, masks, patches, job, report, then test
    slides, maps, detections, FROC), at a tiny size."""
    demo = tmp_path / "demo"
    result = subprocess.run(
        ["make", "-C", str(REPO), "pathology-demo", f"DEMO_DIR={demo}", "PATHO_SIZE=3072 2048", "PATHO_TUMOR=2",
         "PATHO_NORMAL=2", "PATHO_PATCHES=10", "PATHO_ROUNDS=2", "PATHO_TEST_TUMOR=2", "PATHO_TEST_NORMAL=1"],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Global best model selected via IntimeModelSelector" in result.stdout
    assert "FROC score" in result.stdout and "slide-level AUC" in result.stdout
    pathology = demo / "pathology"
    assert len(list((pathology / "maps").glob("test_*_heatmap.png"))) == 3
    assert (pathology / "froc/froc.png").is_file() and (pathology / "report/report.txt").is_file()


def test_readme_quick_start_has_the_two_commands():
    readme = (REPO / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = [line.strip() for block in quick.split("```")[1::2] for line in block.splitlines() if line.strip()]
    assert blocks == ["make demo", "make test"]
    ci = (REPO / ".ci/run").read_text()
    assert "make test" in ci


def test_job_export_refuses_a_foreign_folder_and_bad_options(tmp_path, capsys):
    """`job --export` writes DIR/<job name>; a folder there that an export did not write is left alone."""
    foreign = tmp_path / "brats_fl"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert brats_cli.main(["job", "--export", "--export-dir", str(tmp_path)]) == 2
    assert "brats_fl: exists and is not a FLARE job folder" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "mine" and len(list(foreign.iterdir())) == 1
    assert brats_cli.main(["job", "--export", "--export-dir", str(tmp_path / "out"), "--set", "lr=-1"]) == 2
    assert "lr" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert brats_cli.main(["job", "--env", "prod", "--rounds", "1"]) == 2
    assert "--startup-kit" in capsys.readouterr().err
    assert brats_cli.main(["job", "--export", "--export-dir", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out/brats_fl/app/custom/brats_fl/learner.py").is_file()
    assert (tmp_path / "out/brats_fl/app/custom/medcore/files.py").is_file()
