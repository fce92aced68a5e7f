"""The error policy of both command-line tools, table-driven.

Every bad input below must end with exit status 2, exactly one line on stderr naming the file, folder, option or
setting at fault, no traceback, and no file created, changed or deleted anywhere under the inputs. Unexpected
failures, on the other hand, must still show their traceback.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import medcore.command
from brats_fl import cli as brats_cli
from demodata.brats import case_names
from medcore.files import input_files, load_torch, write_text
from metastasis import cli as metastasis_cli
from tests.support import REPO



class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ws(tmp_path_factory, brats_root, camelyon_root):
    """Inputs for the bad cases: user data the commands must never touch, valid and broken files."""
    from brats_fl.model import BratsSegResNet
    from metastasis.model import PatchClassifier

    ws = tmp_path_factory.mktemp("policy")
    (ws / "data").mkdir()
    (ws / "data/keep.txt").write_text("user data\n")
    (ws / "data/results.csv").write_text("patient,score\n1,0.5\n")
    (ws / "data/seg.nii.gz").write_bytes(b"not ours")
    (ws / "a_file").write_text("a file, not a folder\n")
    (ws / "emptydir").mkdir()
    torch.save({"model": BratsSegResNet().state_dict()}, ws / "brats.pt")
    torch.save({"model": PatchClassifier(64).state_dict(), "train_conf": {"patch_size": 64}}, ws / "patho.pt")
    torch.manual_seed(1)
    torch.save({"model": PatchClassifier(64).state_dict(), "train_conf": {"patch_size": 64}}, ws / "patho_other.pt")
    diverged = PatchClassifier(64).state_dict()  # weights of a training run that diverged
    diverged["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save({"model": diverged, "train_conf": {"patch_size": 64}}, ws / "patho_nan.pt")
    diverged = BratsSegResNet().state_dict()
    next(v for v in diverged.values() if v.is_floating_point()).fill_(float("inf"))
    torch.save({"model": diverged}, ws / "brats_inf.pt")
    (ws / "corrupt.pt").write_bytes(b"\x00garbage, not a checkpoint")
    torch.save({"model": {"w": torch.zeros(1)}, "extra": _Evil()}, ws / "evil.pt")
    # a datalist whose first testing entry has no label
    from brats_fl.datalist import build_datalists, write_datalists

    write_datalists(brats_root, ws / "datalists", check=False)
    lists = build_datalists(brats_root, check=False)["site-1"]
    del lists["testing"][0]["label"]
    (ws / "nolabel.json").write_text(json.dumps(lists))
    # probability maps: one whose JSON lacks the stride, and a folder with only a killed run's partial file
    (ws / "maps_nostride").mkdir()
    np.save(ws / "maps_nostride/tumor_001.npy", np.zeros((4, 4), np.float32))
    (ws / "maps_nostride/tumor_001.json").write_text(json.dumps({"slide": "x.tif", "origin": [16, 16],
                                                                  "shape": [4, 4], "level0_size": [128, 128]}))
    (ws / "maps_partial").mkdir()
    np.save(ws / "maps_partial/.tumor_001.npy.1a2b3c4d.part.npy", np.zeros((4, 4), np.float32))
    # a training folder with a corrupt state
    (ws / "train_out").mkdir()
    (ws / "train_out/trainer_state.pt").write_bytes(b"PK\x03\x04 truncated")
    # a real-looking data set the generators must not overwrite
    hgg = ws / "real_brats/HGG" / case_names("HGG", 1, 0)[0]
    hgg.mkdir(parents=True)
    (hgg / "note.txt").write_text("a real case\n")
    (ws / "real_camelyon/testing").mkdir(parents=True)
    (ws / "real_camelyon/testing/reference.csv").write_text("test_001,Tumor,Macro,Primary\n")
    (ws / "real_camelyon/testing/images").mkdir()
    (ws / "real_camelyon/training/normal").mkdir(parents=True)
    (ws / "real_camelyon/training/normal/normal_001.tif").write_bytes(b"II*\x00 a slide from a scanner")
    # a job make-job wrote (for deploy), and a project file on a free port
    assert brats_cli.main(["make-job", "--out", str(ws / "job"), "--rounds", "1"]) == 0
    # outputs of the project that a user has added files to, and user files named like the project's outputs
    assert brats_cli.main(["make-job", "--out", str(ws / "job_with_notes"), "--rounds", "1"]) == 0
    (ws / "job_with_notes/NOTES.md").write_text("my notes\n")
    assert brats_cli.main(["make-job", "--out", str(ws / "job_with_module"), "--rounds", "1"]) == 0
    (ws / "job_with_module/app/custom/medcore/my_patch.py").write_text("# mine\n")
    # two folders holding slides of one name, in different case (their maps or masks would collide)
    slide = sorted((camelyon_root / "training/tumor").glob("*.tif"))[0]
    for folder, name in (("dup_a", "s.tif"), ("dup_b", "S.TIF")):
        (ws / folder).mkdir()
        (ws / folder / name).write_bytes(slide.read_bytes())
    # a job whose only foreign files are named like Python's byte-code caches (they are still the user's)
    for folder, name in (("job_with_pyc", "mine.pyc"), ("job_with_cache_notes", "app/custom/__pycache__/notes.txt"),
                         ("job_with_fake_cache", "app/custom/medcore/__pycache__/nosuchmodule.cpython-311.pyc")):
        assert brats_cli.main(["make-job", "--out", str(ws / folder), "--rounds", "1"]) == 0
        (ws / folder / name).parent.mkdir(parents=True, exist_ok=True)
        (ws / folder / name).write_bytes(b"the user's own bytes")
    assert brats_cli.main(["make-data", "--out", str(ws / "gen_brats"), "--hgg", "1", "--lgg", "0", "--shape",
                           "32", "32", "24"]) == 0
    (next((ws / "gen_brats/HGG").iterdir()) / "my_review.txt").write_text("reviewed\n")
    for folder, name in (("user_datalists", "seg_brats18_datalist_client_a.json"), ("user_report", "report.txt"),
                         ("user_froc", "froc.json"), ("user_tissue", "tumor_001_tissue.png"),
                         ("user_train", "metrics.csv")):
        (ws / folder).mkdir()
        (ws / folder / name).write_text("the user's own file\n")
    (ws / "binary.csv").write_bytes(b"\xff\xfe\x00\x81garbage")
    (ws / "det_binary").mkdir()
    (ws / "det_binary/tumor_001.csv").write_bytes(b"\xff\xfe\x00\x81garbage")
    # detections and annotations that do not fit the 3072 x 2048 slide tumor_001, and a CSV of another format
    for folder, text in (("det_off_slide", "0.9,5000,100\n"), ("det_far", "0.9,10000000,100\n"),
                         ("det_huge", "0.9,1e20,1e30\n"), ("det_four_columns", "0.9,100,100,7\n")):
        (ws / folder).mkdir()
        (ws / folder / "tumor_001.csv").write_text(text)
    (ws / "deep.json").write_text("[" * 200_000 + "]" * 200_000)  # parses only with a deeper stack than Python's
    for name, text in (("ref_twice.csv", "tumor_001,Tumor\nnormal_001,Normal\ntumor_001,Normal\n"),
                       ("ref_header_only.csv", "name,label\n"), ("ref_empty.csv", ""),
                       ("ref_normal_with_lesions.csv", "tumor_001,Normal\n")):
        (ws / name).write_text(text)
    from metastasis.data.annotations import Annotation, write_asap_xml

    (ws / "xml_off_slide").mkdir()
    write_asap_xml(ws / "xml_off_slide/tumor_001.xml",
                   [Annotation("_0", "Tumor", np.array([[100.0, 100.0], [9000.0, 100.0], [9000.0, 900.0]]))])
    (ws / "ncrf_nan.txt").write_text("tumor_001,nan,inf\n")
    (ws / "maps_seven").mkdir()
    np.save(ws / "maps_seven/tumor_001.npy", np.full((4, 4), 7, np.float32))
    (ws / "maps_seven/tumor_001.json").write_text(json.dumps({"slide": "x.tif", "stride": 32, "origin": [16, 16],
                                                              "shape": [4, 4], "level0_size": [128, 128], "mpp": 0.5}))
    (ws / "masks_three").mkdir()
    np.save(ws / "masks_three/tumor_001.npy", np.full((64, 96), 3, np.uint8))
    (ws / "xml_dir/tumor_001.xml").mkdir(parents=True)
    results = {"site-1": {"SRV_FL_global_model.pt": {"TC": 5.0, "WT": 0.5, "ET": 0.5, "n_cases": 3}}}
    (ws / "bad_dice.json").write_text(json.dumps(results))
    results["site-1"]["SRV_FL_global_model.pt"]["TC"] = 0.5
    (ws / "results.json").write_text(json.dumps(results))
    project = (REPO / "provisioning/brats_project.yml").read_text().replace("8002", str(_free_port()))
    (ws / "project.yml").write_text(project)
    # outputs of earlier runs, which a rerun with other settings must not keep or extend
    assert metastasis_cli.main(["tissue", str(slide), "--out", str(ws / "masks_made")]) == 0
    assert metastasis_cli.main(["infer", str(slide), "--checkpoint", str(ws / "patho.pt"), "--out",
                                str(ws / "maps_made"), "--masks", str(ws / "masks_made"), "--stride", "128"]) == 0
    assert brats_cli.main(["train", "--datalist", str(ws / "datalists/seg_brats18_datalist_client_a.json"),
                           "--data-root", str(brats_root), "--out", str(ws / "train_made"), "--epochs", "1",
                           "--set", "crop=[32,32,32]", "--set", "num_workers=0"]) == 0
    # a map whose JSON puts it outside its slide, a forged .npy header, a JSON given as a map
    (ws / "maps_off_slide").mkdir()
    np.save(ws / "maps_off_slide/tumor_001.npy", np.zeros((16, 24), np.float32))
    (ws / "maps_off_slide/tumor_001.json").write_text(json.dumps(
        {"slide": str(slide), "stride": 1024, "origin": [64, 64], "shape": [16, 24], "level0_size": [3072, 2048]}))
    (ws / "maps_forged").mkdir()
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000), }"
    (ws / "maps_forged/tumor_001.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little")
                                                   + header.encode())
    (ws / "maps_forged/tumor_001.json").write_text(json.dumps(
        {"slide": str(slide), "stride": 1, "origin": [0.5, 0.5], "shape": [100000, 100000],
         "level0_size": [100000, 100000]}))
    # a tissue mask PNG of far more pixels than its JSON says (PIL's decompression-bomb error before)
    from PIL import Image

    (ws / "masks_bomb").mkdir()
    Image.new("L", (20000, 10000)).save(ws / "masks_bomb/tumor_001_tissue.png")
    (ws / "masks_bomb/tumor_001_tissue.json").write_text((ws / "masks_made/tumor_001_tissue.json").read_text())
    assert metastasis_cli.main(["make-data", "--out", str(ws / "gen_camelyon"), "--split", "testing", "--tumor", "1",
                                "--normal", "1", "--width", "1024", "--height", "1024"]) == 0
    # links that lead nowhere
    (ws / "loop_a").symlink_to(ws / "loop_b")
    (ws / "loop_b").symlink_to(ws / "loop_a")
    (ws / "dangling.pt").symlink_to(ws / "no_such_target.pt")
    return ws


def _expand(argv, ws, brats_root, camelyon_root):
    slide = sorted((camelyon_root / "training/tumor").glob("*.tif"))[0]
    values = {"ws": ws, "brats": brats_root, "camelyon": camelyon_root, "slide": slide,
              "datalist": ws / "datalists/seg_brats18_datalist_client_a.json"}
    return [a.format(**values) for a in argv]


def _snapshot(*roots: Path) -> dict:
    state = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                info = path.lstat()
                # a folder's own mtime is left out: probing that an output folder is writable touches it
                state[str(path)] = (True,) if stat.S_ISDIR(info.st_mode) else \
                    (info.st_size, info.st_mtime_ns, info.st_mode)
    return state


def _run(module, argv, capsys, monkeypatch) -> tuple[int, str]:
    monkeypatch.setattr(medcore.command, "configure_logging", lambda verbose: None)
    capsys.readouterr()
    try:
        code = module.main(argv)
    except SystemExit as done:  # argparse's usage errors
        code = done.code
    return code, capsys.readouterr().err


BRATS_CASES = [
    # never delete what the project did not create
    ("make-job over a data folder", ["make-job", "--out", "{ws}/data"], "{ws}/data: exists and is not a FLARE job"),
    ("make-job over the other task's job", ["make-job", "--out", str(REPO / "jobs/pathology_metastasis")],
     "not a FLARE job"),
    ("make-job out is a file", ["make-job", "--out", "{ws}/a_file"], "argument --out: {ws}/a_file: is a file"),
    ("deploy workspace is a data folder", ["deploy", "{ws}/job", "--workspace", "{ws}/data", "--project",
                                           "{ws}/project.yml"], "{ws}/data: exists and is not a federation"),
    ("deploy workspace is a job", ["deploy", "{ws}/job", "--workspace", "{ws}/job", "--project", "{ws}/project.yml"],
     "{ws}/job: exists and is not a federation"),
    ("deploy a non-job", ["deploy", "{ws}/data", "--workspace", "{ws}/new_ws", "--project", "{ws}/project.yml"],
     "{ws}/data: not a job folder"),
    ("deploy missing project", ["deploy", "{ws}/job", "--workspace", "{ws}/new_ws", "--project", "{ws}/none.yml"],
     "argument --project: {ws}/none.yml: no such file"),
    ("deploy bad project", ["deploy", "{ws}/job", "--workspace", "{ws}/new_ws", "--project", "{ws}/a_file"],
     "{ws}/a_file: not a provisioning project file"),
    ("deploy bad timeout", ["deploy", "{ws}/job", "--workspace", "{ws}/new_ws", "--timeout", "0"],
     "argument --timeout: must be > 0"),
    ("deploy missing data root", ["deploy", "{ws}/job", "--workspace", "{ws}/new_ws", "--data-root", "{ws}/nope"],
     "argument --data-root: {ws}/nope: no such folder"),
    ("make-data overwrites a real case", ["make-data", "--out", "{ws}/real_brats", "--hgg", "1", "--lgg", "0",
                                          "--shape", "32", "32", "24", "--overwrite"],
     "exists and is not a synthetic BraTS case"),
    ("validate over a user's CSV", ["validate", "--checkpoint", "{ws}/brats.pt", "--datalist", "{datalist}",
                                    "--data-root", "{brats}", "--out", "{ws}/data/results.csv"],
     "{ws}/data/results.csv: exists and is not a validation CSV"),
    ("infer over a user's file", ["infer", "--checkpoint", "{ws}/brats.pt", "--case-dir",
                                  "{brats}/HGG/" + case_names("HGG", 1, 0)[0], "--out", "{ws}/data/seg.nii.gz"],
     "{ws}/data/seg.nii.gz: exists and is not a label map"),
    # typed settings
    ("setting not a number", ["make-job", "--out", "{ws}/new_job", "--set", "lr=abc"],
     "setting lr: expected a number, got 'abc'"),
    ("setting not a boolean", ["make-job", "--out", "{ws}/new_job", "--set", "vae=no"],
     "setting vae: expected true or false, got 'no'"),
    ("amp maybe", ["make-job", "--out", "{ws}/new_job", "--set", "amp=maybe"], "setting amp: expected true or false"),
    ("device tpu", ["make-job", "--out", "{ws}/new_job", "--set", "device=tpu"],
     "setting device: expected auto, cpu, cuda or cuda:N, got 'tpu'"),
    ("setting not whole", ["make-job", "--out", "{ws}/new_job", "--set", "batch_size=1.5"],
     "setting batch_size: expected a whole number"),
    ("setting out of range", ["make-job", "--out", "{ws}/new_job", "--set", "val_overlap=1"],
     "setting val_overlap: must be >= 0 and < 1"),
    ("unknown setting", ["make-job", "--out", "{ws}/new_job", "--set", "learning_rate=1"],
     "unknown training setting(s) ['learning_rate']"),
    ("set without =", ["make-job", "--out", "{ws}/new_job", "--set", "lr"], "argument --set: expected KEY=VALUE"),
    # option ranges and values
    ("rounds 0", ["make-job", "--out", "{ws}/new_job", "--rounds", "0"], "argument --rounds: must be >= 1, got 0"),
    ("negative SVT gamma", ["make-job", "--out", "{ws}/new_job", "--privacy", "svt", "--privacy-set", "gamma=-1"],
     "privacy filter svt: setting gamma: must be > 0, got -1"),
    ("percentile of 150", ["make-job", "--out", "{ws}/new_job", "--privacy", "percentile", "--privacy-set",
                           "percentile=150"], "privacy filter percentile: setting percentile: must be >= 0 and <= 100"),
    ("SVT fraction as text", ["make-job", "--out", "{ws}/new_job", "--privacy", "svt", "--privacy-set",
                              "fraction=most"], "privacy filter svt: setting fraction: expected a number, got 'most'"),
    ("batch size 10^20", ["make-job", "--out", "{ws}/new_job", "--set", "batch_size=100000000000000000000"],
     "setting batch_size: must be >= 1 and <= 2147483647"),
    ("crop given twice", ["make-job", "--out", "{ws}/new_job", "--crop", "64", "64", "48", "--set",
                          "crop=[32,32,32]"], "--crop 64 64 48 and --set crop=[32, 32, 32] disagree"),
    ("crop given twice, once as a number", ["make-job", "--out", "{ws}/new_job", "--crop", "64", "64", "48", "--set",
                                            "crop=5"], "--crop 64 64 48 and --set crop=5 disagree"),
    ("seed 10^20", ["make-job", "--out", "{ws}/new_job", "--set", "seed=100000000000000000000"],
     "setting seed: must be >= 0 and <= 2147483647"),
    ("crop not /8", ["make-job", "--out", "{ws}/new_job", "--crop", "100", "96", "96"],
     "argument --crop: must be a multiple of 8, got 100"),
    ("resume id", ["make-job", "--out", "{ws}/new_job", "--resume-from", "../x"], "is not a job id"),
    ("device gpu", ["validate", "--checkpoint", "{ws}/brats.pt", "--datalist", "{datalist}", "--data-root",
                    "{brats}", "--out", "{ws}/v.csv", "--device", "gpu"],
     "argument --device: expected auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("overlap 1", ["validate", "--checkpoint", "{ws}/brats.pt", "--datalist", "{datalist}", "--data-root",
                   "{brats}", "--out", "{ws}/v.csv", "--overlap", "1"], "argument --overlap: must be >= 0 and < 1"),
    ("roi not /8", ["validate", "--checkpoint", "{ws}/brats.pt", "--datalist", "{datalist}", "--data-root",
                    "{brats}", "--out", "{ws}/v.csv", "--roi", "100", "96", "96"], "argument --roi"),
    ("corrupt checkpoint", ["validate", "--checkpoint", "{ws}/corrupt.pt", "--datalist", "{datalist}",
                            "--data-root", "{brats}", "--out", "{ws}/v.csv"],
     "{ws}/corrupt.pt: not a readable PyTorch checkpoint"),
    ("untrusted checkpoint", ["validate", "--checkpoint", "{ws}/evil.pt", "--datalist", "{datalist}",
                              "--data-root", "{brats}", "--out", "{ws}/v.csv"], "refused for safety"),
    ("checkpoint with infinite weights", ["validate", "--checkpoint", "{ws}/brats_inf.pt", "--datalist",
                                          "{datalist}", "--data-root", "{brats}", "--out", "{ws}/v.csv"],
     "{ws}/brats_inf.pt: the checkpoint holds NaN or infinite values"),
    ("missing checkpoint", ["validate", "--checkpoint", "{ws}/none.pt", "--datalist", "{datalist}",
                            "--data-root", "{brats}", "--out", "{ws}/v.csv"], "argument --checkpoint: {ws}/none.pt"),
    ("datalist entry without label", ["validate", "--checkpoint", "{ws}/brats.pt", "--datalist", "{ws}/nolabel.json",
                                      "--data-root", "{brats}", "--out", "{ws}/v.csv"],
     "{ws}/nolabel.json: testing[0] must be"),
    ("datalist nested 200,000 deep", ["validate", "--checkpoint", "{ws}/brats.pt", "--datalist", "{ws}/deep.json",
                                      "--data-root", "{brats}", "--out", "{ws}/v.csv"],
     "{ws}/deep.json: JSON nested too deeply to read"),
    ("report of JSON nested 200,000 deep", ["report", "{ws}/deep.json", "--out", "{ws}/new_report"],
     "{ws}/deep.json: JSON nested too deeply to read"),
    ("datalist is not JSON", ["validate", "--checkpoint", "{ws}/brats.pt", "--datalist", "{ws}/a_file",
                              "--data-root", "{brats}", "--out", "{ws}/v.csv"], "{ws}/a_file: not valid JSON"),
    ("validate out is a folder", ["validate", "--checkpoint", "{ws}/brats.pt", "--datalist", "{datalist}",
                                  "--data-root", "{brats}", "--out", "{ws}/emptydir"], "argument --out: {ws}/emptydir"),
    ("validate out under a file", ["validate", "--checkpoint", "{ws}/brats.pt", "--datalist", "{datalist}",
                                   "--data-root", "{brats}", "--out", "{ws}/a_file/v.csv"],
     "argument --out: {ws}/a_file/v.csv: cannot be created"),
    ("missing case dir", ["infer", "--checkpoint", "{ws}/brats.pt", "--case-dir", "{ws}/nope", "--out",
                          "{ws}/s.nii.gz"], "argument --case-dir: {ws}/nope: no such folder"),
    ("make-data negative", ["make-data", "--out", "{ws}/new_data", "--hgg", "-1"], "argument --hgg: must be >= 0"),
    ("make-data tiny shape", ["make-data", "--out", "{ws}/new_data", "--shape", "8", "8", "8"], "argument --shape"),
    ("make-data out is a file", ["make-data", "--out", "{ws}/a_file"], "argument --out: {ws}/a_file: is a file"),
    ("datalist of a missing root", ["datalist", "{ws}/nope"], "{ws}/nope: BraTS root folder does not exist"),
    ("report of a missing path", ["report", "{ws}/nope"], "{ws}/nope"),
    ("report weight", ["report", "{ws}/job", "--weights", "site-1=abc"], "argument --weights"),
    ("make-job over its job holding a user's file", ["make-job", "--out", "{ws}/job_with_notes"],
     "not written by this project, inside the FLARE job folder"),
    ("make-job over its job holding a user's .pyc", ["make-job", "--out", "{ws}/job_with_pyc"],
     "{ws}/job_with_pyc/mine.pyc: not written by this project"),
    ("make-job over its job holding a note in __pycache__", ["make-job", "--out", "{ws}/job_with_cache_notes"],
     "{ws}/job_with_cache_notes/app/custom/__pycache__/notes.txt: not written by this project"),
    ("make-job over its job holding a cache of no module", ["make-job", "--out", "{ws}/job_with_fake_cache"],
     "nosuchmodule.cpython-311.pyc: not written by this project"),
    ("make-job over its job holding a user's module", ["make-job", "--out", "{ws}/job_with_module"],
     "{ws}/job_with_module/app/custom/medcore/my_patch.py: not written by this project, inside the FLARE job"),
    ("make-data over a generated case holding a user's file", ["make-data", "--out", "{ws}/gen_brats", "--hgg", "1",
                                                                "--lgg", "0", "--shape", "32", "32", "24",
                                                                "--overwrite"], "is not a synthetic BraTS case"),
    ("datalist over a user's datalist", ["datalist", "{brats}", "--out", "{ws}/user_datalists", "--no-check"],
     "{ws}/user_datalists/seg_brats18_datalist_client_a.json: exists and was not written by datalists"),
    ("report with a Dice of 5", ["report", "{ws}/bad_dice.json", "--out", "{ws}/new_report"],
     "{ws}/bad_dice.json: model 'SRV_FL_global_model.pt' on site 'site-1' has TC = 5.0, outside [0, 1]"),
    ("report over a user's report", ["report", "{ws}/results.json", "--out", "{ws}/user_report", "--no-plot"],
     "{ws}/user_report/report.txt: exists and was not written by report"),
    ("infer to a non-NIfTI name", ["infer", "--checkpoint", "{ws}/brats.pt", "--case-dir",
                                   "{brats}/HGG/" + case_names("HGG", 1, 0)[0], "--out", "{ws}/seg.txt"],
     "end the name in .nii.gz or .nii"),
    ("infer with a case folder and files", ["infer", "--checkpoint", "{ws}/brats.pt", "--case-dir",
                                            "{brats}/HGG/" + case_names("HGG", 1, 0)[0], "--t1", "{ws}/a_file",
                                            "--out", "{ws}/s.nii.gz"], "give either a case folder or the four files"),
    ("make-data huge shape", ["make-data", "--out", "{ws}/new_data", "--shape", "99999", "99999", "99999"],
     "argument --shape: must be >= 16 and <= 512"),
    ("empty output path", ["make-data", "--out", ""], "argument --out: empty path"),
    ("empty data root", ["make-job", "--out", "{ws}/new_job", "--data-root", ""], "argument --data-root: empty path"),
    # reruns with other settings: refused, naming the difference, instead of continuing with a mix
    ("train resumed with another recipe", ["train", "--datalist", "{datalist}", "--data-root", "{brats}", "--out",
                                           "{ws}/train_made", "--epochs", "2", "--set", "crop=[32,32,32]", "--set",
                                           "num_workers=0", "--set", "lr=0.5"],
     "{ws}/train_made/trainer_state.pt: made with other settings than this run's (lr 0.0001 -> 0.5)"),
    ("train resumed on other cases", ["train", "--datalist", "{ws}/datalists/seg_brats18_datalist_client_b.json",
                                      "--data-root", "{brats}", "--out", "{ws}/train_made", "--epochs", "2", "--set",
                                      "crop=[32,32,32]", "--set", "num_workers=0"], "made with other settings than "
     "this run's (cases "),
    ("make-data of another shape beside its cases", ["make-data", "--out", "{ws}/gen_brats", "--hgg", "1", "--lgg",
                                                     "0", "--shape", "40", "32", "24"],
     "made with other settings than this run's (shape [32, 32, 24] -> [40, 32, 24])"),
    # numbers too large for what they size, and an allocation that cannot succeed
    ("sliding windows 10^6 at once", ["validate", "--checkpoint", "{ws}/brats.pt", "--datalist", "{datalist}",
                                      "--data-root", "{brats}", "--out", "{ws}/v.csv", "--sw-batch-size", "1000000"],
     "argument --sw-batch-size: must be >= 1 and <= 1024"),
    ("a window of 4096^3 voxels", ["validate", "--checkpoint", "{ws}/brats.pt", "--datalist", "{datalist}",
                                   "--data-root", "{brats}", "--out", "{ws}/v.csv", "--roi", "4096", "4096", "4096"],
     "out of memory"),
    ("threads 2 x 10^9", ["make-job", "--out", "{ws}/new_job", "--set", "num_threads=2000000000"],
     "setting num_threads: must be >= 0 and <= 1024"),
]

METASTASIS_CASES = [
    ("make-job over a data folder", ["make-job", "--out", "{ws}/data"], "{ws}/data: exists and is not a FLARE job"),
    ("deploy workspace is a data folder", ["deploy", "{ws}/job", "--workspace", "{ws}/data", "--project",
                                           "{ws}/project.yml"], "{ws}/data: exists and is not a federation"),
    ("make-data over a real reference.csv", ["make-data", "--out", "{ws}/real_camelyon", "--split", "testing",
                                             "--tumor", "1", "--normal", "0", "--width", "1024", "--height", "768"],
     "reference.csv: exists and is not a synthetic reference.csv"),
    ("make-data over a real slide", ["make-data", "--out", "{ws}/real_camelyon", "--tumor", "0", "--normal", "1",
                                     "--width", "1024", "--height", "768", "--overwrite"],
     "{ws}/real_camelyon/training/normal/normal_001.tif: exists and is not a synthetic slide"),
    ("patches over a user's file", ["patches", "--data-root", "{camelyon}", "--out", "{ws}/data/keep.txt"],
     "{ws}/data/keep.txt: exists and is not a patch list"),
    ("validate csv over a user's file", ["validate", "--checkpoint", "{ws}/patho.pt", "--patches", "{ws}/a_file",
                                         "--csv", "{ws}/data/results.csv"],
     "{ws}/data/results.csv: exists and is not a patch probability CSV"),
    ("setting not a boolean", ["make-job", "--out", "{ws}/new_job", "--set", "augment=no"],
     "setting augment: expected true or false"),
    ("setting threshold out of range", ["make-job", "--out", "{ws}/new_job", "--set", "threshold=2"],
     "setting threshold: must be > 0 and < 1"),
    ("setting device", ["train", "--patches", "{ws}/a_file", "--out", "{ws}/new_train", "--set", "device=tpu"],
     "setting device: expected auto, cpu, cuda or cuda:N"),
    ("patch list nested 200,000 deep", ["validate", "--checkpoint", "{ws}/patho.pt", "--patches", "{ws}/deep.json"],
     "{ws}/deep.json: JSON nested too deeply to read"),
    ("infer with NaN weights", ["infer", "{slide}", "--checkpoint", "{ws}/patho_nan.pt", "--out", "{ws}/new_maps"],
     "{ws}/patho_nan.pt: the checkpoint holds NaN or infinite values (in model.layer1.0.conv1.weight)"),
    ("infer of two slides of one name", ["infer", "{ws}/dup_a", "{ws}/dup_b", "--checkpoint", "{ws}/patho.pt",
                                         "--out", "{ws}/new_maps"],
     "{ws}/dup_a/s.tif and {ws}/dup_b/S.TIF: two slides of one name; their probability maps would overwrite"),
    ("tissue of two slides of one name", ["tissue", "{ws}/dup_a", "{ws}/dup_b", "--out", "{ws}/new_masks"],
     "{ws}/dup_a/s.tif and {ws}/dup_b/S.TIF: two slides of one name; their tissue masks would overwrite"),
    ("tissue out under a file", ["tissue", "{slide}", "--out", "{ws}/a_file/x"],
     "argument --out: {ws}/a_file/x: cannot be created"),
    ("tissue missing slide", ["tissue", "{ws}/none.tif", "--out", "{ws}/masks"], "{ws}/none.tif: no such slide"),
    ("tissue not a slide", ["tissue", "{ws}/a_file", "--out", "{ws}/masks"], "{ws}/a_file: OpenSlide cannot open"),
    ("tissue saturation", ["tissue", "{slide}", "--out", "{ws}/masks", "--min-saturation", "2"],
     "argument --min-saturation: must be >= 0 and <= 1"),
    ("infer device gpu", ["infer", "{slide}", "--checkpoint", "{ws}/patho.pt", "--out", "{ws}/maps",
                          "--device", "gpu"], "argument --device"),
    ("infer corrupt checkpoint", ["infer", "{slide}", "--checkpoint", "{ws}/corrupt.pt", "--out", "{ws}/maps"],
     "{ws}/corrupt.pt: cannot read checkpoint"),
    ("infer untrusted checkpoint", ["infer", "{slide}", "--checkpoint", "{ws}/evil.pt", "--out", "{ws}/maps"],
     "{ws}/evil.pt: the checkpoint holds Python objects besides tensors and is refused for safety"),
    ("infer masks typo", ["infer", "{slide}", "--checkpoint", "{ws}/patho.pt", "--out", "{ws}/maps", "--masks",
                          "{ws}/nope"], "argument --masks: {ws}/nope: no such folder"),
    ("infer tiled stride", ["infer", "{slide}", "--checkpoint", "{ws}/patho.pt", "--out", "{ws}/maps", "--stride",
                            "48"], "--stride 48: the tiled mode needs a multiple of 32"),
    ("infer stride 0", ["infer", "{slide}", "--checkpoint", "{ws}/patho.pt", "--out", "{ws}/maps", "--stride", "0"],
     "argument --stride: must be >= 1"),
    ("detect map without stride", ["detect", "{ws}/maps_nostride", "--out", "{ws}/det"],
     "{ws}/maps_nostride/tumor_001.json: not a probability map description (missing or malformed: stride)"),
    ("detect never reads partial files", ["detect", "{ws}/maps_partial", "--out", "{ws}/det"],
     "{ws}/maps_partial: no .npy probability maps"),
    ("detect threshold 2", ["detect", "{ws}/maps_nostride", "--out", "{ws}/det", "--threshold", "2"],
     "argument --threshold: must be >= 0 and <= 1, got 2"),
    ("detect threshold -1", ["detect", "{ws}/maps_nostride", "--out", "{ws}/det", "--threshold", "-1"],
     "argument --threshold"),
    ("detect threshold nan", ["detect", "{ws}/maps_nostride", "--out", "{ws}/det", "--threshold", "nan"],
     "argument --threshold: expected a finite number"),
    ("detect missing maps", ["detect", "{ws}/nope", "--out", "{ws}/det"], "argument maps: {ws}/nope"),
    ("evaluate level -1", ["evaluate", "{slide}", "--detections", "{ws}/emptydir", "--out", "{ws}/froc", "--level",
                           "-1"], "argument --level: must be >= 0"),
    ("evaluate missing reference", ["evaluate", "{slide}", "--detections", "{ws}/emptydir", "--out", "{ws}/froc",
                                    "--reference", "{ws}/nope.csv"], "argument --reference: {ws}/nope.csv"),
    ("evaluate annotations typo", ["evaluate", "{slide}", "--detections", "{ws}/emptydir", "--out", "{ws}/froc",
                                   "--annotations", "{camelyon}/training/lesion_annotation"],
     "argument --annotations: {camelyon}/training/lesion_annotation: no such folder"),
    ("evaluate detections missing", ["evaluate", "{slide}", "--detections", "{ws}/nope", "--out", "{ws}/froc"],
     "{ws}/nope: detections folder missing"),
    ("train epochs 0", ["train", "--patches", "{ws}/a_file", "--out", "{ws}/new_train", "--epochs", "0"],
     "argument --epochs: must be >= 1, got 0"),
    ("train corrupt state", ["train", "--patches", "{ws}/patches.json", "--data-root", "{camelyon}", "--out",
                             "{ws}/train_out", "--set", "patch_size=64", "--set", "num_workers=0"],
     "{ws}/train_out/trainer_state.pt: not a readable PyTorch training state"),
    ("train missing patches", ["train", "--patches", "{ws}/nope.json", "--out", "{ws}/new_train"],
     "argument --patches: {ws}/nope.json: no such file"),
    ("patches validation fraction", ["patches", "--data-root", "{camelyon}", "--out", "{ws}/p.json",
                                     "--validation-fraction", "1"], "argument --validation-fraction"),
    ("patches missing NCRF file", ["patches", "--data-root", "{camelyon}", "--out", "{ws}/p.json", "--ncrf-train",
                                   "{ws}/nope.txt=1"], "argument --ncrf-train: {ws}/nope.txt: no such file"),
    ("make-data width", ["make-data", "--out", "{ws}/new_data", "--width", "100"], "argument --width: must be >= 512"),
    ("make-data tile", ["make-data", "--out", "{ws}/new_data", "--tile", "100"],
     "argument --tile: must be a multiple of 16"),
    ("make-data workers", ["make-data", "--out", "{ws}/new_data", "--workers", "0"], "argument --workers"),
    ("make-data huge width", ["make-data", "--out", "{ws}/new_data", "--width", "999999999999"], "argument --width"),
    ("infer huge stride", ["infer", "{slide}", "--checkpoint", "{ws}/patho.pt", "--out", "{ws}/maps", "--mode",
                           "patch", "--stride", "99999999"], "argument --stride: must be >= 1 and <= 4096"),
    ("evaluate a detection off the slide", ["evaluate", "{slide}", "--detections", "{ws}/det_off_slide", "--out",
                                            "{ws}/froc"],
     "{ws}/det_off_slide/tumor_001.csv: detection 1 at level-0 (5000, 100) lies outside the 3072x2048 slide"),
    ("evaluate a detection 10^7 pixels away", ["evaluate", "{slide}", "--detections", "{ws}/det_far", "--out",
                                               "{ws}/froc"], "{ws}/det_far/tumor_001.csv:1: expected a probability"),
    ("evaluate detections at 1e20", ["evaluate", "{slide}", "--detections", "{ws}/det_huge", "--out", "{ws}/froc"],
     "{ws}/det_huge/tumor_001.csv:1: expected a probability in [0, 1] and level-0 coordinates"),
    ("evaluate detections with a fourth column", ["evaluate", "{slide}", "--detections", "{ws}/det_four_columns",
                                                  "--out", "{ws}/froc"],
     "{ws}/det_four_columns/tumor_001.csv:1: expected 'probability,x,y' (three columns)"),
    ("evaluate annotations off the slide", ["evaluate", "{slide}", "--detections", "{ws}/emptydir", "--annotations",
                                            "{ws}/xml_off_slide", "--out", "{ws}/froc"],
     "{ws}/xml_off_slide/tumor_001.xml: annotation '_0' spans x 100..9000, y 100..900, outside the 3072x2048"),
    ("evaluate binary detections", ["evaluate", "{slide}", "--detections", "{ws}/det_binary", "--out", "{ws}/froc"],
     "{ws}/det_binary/tumor_001.csv: not a text file"),
    ("evaluate a slide listed twice", ["evaluate", "{slide}", "--detections", "{ws}/emptydir", "--out", "{ws}/froc",
                                       "--reference", "{ws}/ref_twice.csv"],
     "{ws}/ref_twice.csv:3: slide tumor_001 is listed again (first on line 1)"),
    ("evaluate a header-only reference", ["evaluate", "{slide}", "--detections", "{ws}/emptydir", "--out",
                                          "{ws}/froc", "--reference", "{ws}/ref_header_only.csv"],
     "{ws}/ref_header_only.csv: lists no slides"),
    ("evaluate an empty reference", ["evaluate", "{slide}", "--detections", "{ws}/emptydir", "--out", "{ws}/froc",
                                     "--reference", "{ws}/ref_empty.csv"], "{ws}/ref_empty.csv: lists no slides"),
    ("evaluate a Normal label on a slide with lesions", ["evaluate", "{slide}", "--detections", "{ws}/emptydir",
                                                         "--annotations", "{camelyon}/training/lesion_annotations",
                                                         "--out", "{ws}/froc", "--reference",
                                                         "{ws}/ref_normal_with_lesions.csv"],
     "slide tumor_001 is labelled Normal, but its ground truth has tumour regions"),
    ("evaluate binary reference", ["evaluate", "{slide}", "--detections", "{ws}/emptydir", "--out", "{ws}/froc",
                                   "--reference", "{ws}/binary.csv"], "{ws}/binary.csv: not a text file"),
    ("evaluate a mask of 3s", ["evaluate", "{slide}", "--detections", "{ws}/emptydir", "--out", "{ws}/froc",
                               "--masks", "{ws}/masks_three", "--level", "5"],
     "{ws}/masks_three/tumor_001.npy: expected an integer mask of 0/1 or 0/255 values"),
    ("evaluate an annotation that is a folder", ["evaluate", "{slide}", "--detections", "{ws}/emptydir", "--out",
                                                 "{ws}/froc", "--annotations", "{ws}/xml_dir"],
     "{ws}/xml_dir/tumor_001.xml: not a file"),
    ("evaluate over a user's froc.json", ["evaluate", "{slide}", "--detections", "{ws}/emptydir", "--annotations",
                                          "{camelyon}/training/lesion_annotations", "--out", "{ws}/user_froc"],
     "{ws}/user_froc/froc.json: exists and was not written by FROC evaluation"),
    ("detect a map of 7s", ["detect", "{ws}/maps_seven", "--out", "{ws}/det"],
     "{ws}/maps_seven/tumor_001.npy: not a probability map"),
    ("NCRF coordinates nan", ["patches", "--data-root", "{camelyon}", "--out", "{ws}/p.json", "--ncrf-train",
                              "{ws}/ncrf_nan.txt=1", "--ncrf-valid", "{ws}/ncrf_nan.txt=0"],
     "{ws}/ncrf_nan.txt:1: expected 'name,x,y'"),
    ("tissue over a user's file", ["tissue", "{slide}", "--out", "{ws}/user_tissue"],
     "{ws}/user_tissue/tumor_001_tissue.png: exists and was not written by tissue masks"),
    ("train over a user's file", ["train", "--patches", "{ws}/patches.json", "--data-root", "{camelyon}", "--out",
                                  "{ws}/user_train", "--set", "patch_size=64", "--set", "num_workers=0"],
     "{ws}/user_train/metrics.csv: exists and was not written by metastasis training run"),
    ("empty detections output", ["detect", "{ws}/maps_seven", "--out", ""], "argument --out: empty path"),
    # reruns with other settings: refused, naming the difference, instead of keeping the old outputs
    ("infer at another stride over earlier maps", ["infer", "{slide}", "--checkpoint", "{ws}/patho.pt", "--out",
                                                   "{ws}/maps_made", "--masks", "{ws}/masks_made", "--stride", "256"],
     "{ws}/maps_made/tumor_001.json: made with other settings than this run's (stride 128 -> 256)"),
    ("infer with another model over earlier maps", ["infer", "{slide}", "--checkpoint", "{ws}/patho_other.pt",
                                                    "--out", "{ws}/maps_made", "--masks", "{ws}/masks_made",
                                                    "--stride", "128"], "made with other settings than this run's "
     "(checkpoint "),
    ("infer without the masks of earlier maps", ["infer", "{slide}", "--checkpoint", "{ws}/patho.pt", "--out",
                                                 "{ws}/maps_made", "--stride", "128"], "(tissue_mask "),
    ("tissue at another downsample over earlier masks", ["tissue", "{slide}", "--out", "{ws}/masks_made",
                                                         "--downsample", "16"],
     "{ws}/masks_made/tumor_001_tissue.json: made with other settings than this run's (downsample 32.0 -> 16.0)"),
    ("tissue with another threshold over earlier masks", ["tissue", "{slide}", "--out", "{ws}/masks_made",
                                                          "--min-saturation", "0.2"], "(min_saturation 0.07 -> 0.2)"),
    ("make-data at another difficulty beside its slides", ["make-data", "--out", "{ws}/gen_camelyon", "--split",
                                                            "testing", "--tumor", "1", "--normal", "1", "--width",
                                                            "1024", "--height", "1024", "--difficulty", "0.5"],
     "made with other settings than this run's (difficulty 0.0 -> 0.5)"),
    # maps that are not maps of their slide, or not maps
    ("detect a map whose stride leaves its slide", ["detect", "{ws}/maps_off_slide", "--out", "{ws}/det"],
     "{ws}/maps_off_slide/tumor_001.json: a map of shape [16, 24] from origin [64, 64] at stride 1024 does not "
     "cover the 3072x2048 slide"),
    ("evaluate with a map whose stride leaves its slide", ["evaluate", "{slide}", "--detections", "{ws}/emptydir",
                                                           "--maps", "{ws}/maps_off_slide", "--out", "{ws}/froc"],
     "{ws}/maps_off_slide/tumor_001.json: a map of shape"),
    ("detect a forged .npy", ["detect", "{ws}/maps_forged", "--out", "{ws}/det"],
     "{ws}/maps_forged/tumor_001.npy: truncated probability map (its header promises 40000000000 bytes"),
    ("detect a JSON given as the map", ["detect", "{ws}/maps_made/tumor_001.json", "--out", "{ws}/det"],
     "{ws}/maps_made/tumor_001.json: not a probability map (expected NAME.npy"),
    ("infer with a mask PNG far larger than its JSON", ["infer", "{slide}", "--checkpoint", "{ws}/patho.pt", "--out",
                                                        "{ws}/new_maps", "--masks", "{ws}/masks_bomb"],
     "{ws}/masks_bomb/tumor_001_tissue.png: image of far more pixels than its description's 96x64; refused unread"),
    ("evaluate at a level coarser than the rules", ["evaluate", "{slide}", "--detections", "{ws}/emptydir", "--out",
                                                    "{ws}/froc", "--level", "9"],
     "level 9: a ground-truth pixel of tumor_001.tif would be 124 um wide"),
    ("evaluate a ground truth without lesions", ["evaluate", "{slide}", "--detections", "{ws}/emptydir", "--out",
                                                 "{ws}/froc", "--masks", "{ws}/emptydir"],
     "no lesions (non-ITC tumour regions) in the ground truth of the 1 slides"),
    ("evaluate excluding a slide it is not given", ["evaluate", "{slide}", "--detections", "{ws}/emptydir", "--out",
                                                    "{ws}/froc", "--exclude", "Test_049"],
     "--exclude Test_049: no such slide among the 1 given"),
    ("evaluate with 10^6 resamples", ["evaluate", "{slide}", "--detections", "{ws}/emptydir", "--out", "{ws}/froc",
                                      "--resamples", "1000000"], "argument --resamples: must be >= 0 and <= 100000"),
    # numbers too large for what they size
    ("infer with 10^11 threads", ["infer", "{slide}", "--checkpoint", "{ws}/patho.pt", "--out", "{ws}/new_maps",
                                  "--num-threads", "100000000000"], "argument --num-threads: must be >= 0 and <= 1024"),
    ("train with 2 x 10^9 threads", ["train", "--patches", "{ws}/a_file", "--out", "{ws}/new_train", "--set",
                                     "num_threads=2000000000"], "setting num_threads: must be >= 0 and <= 1024"),
    ("make-data with 10^6 workers", ["make-data", "--out", "{ws}/new_data", "--workers", "1000000"],
     "argument --workers: must be >= 1 and <= 1024"),
    # links that lead nowhere are named as such, not as missing files
    ("checkpoint is a loop of links", ["infer", "{slide}", "--checkpoint", "{ws}/loop_a", "--out", "{ws}/new_maps"],
     "argument --checkpoint: {ws}/loop_a: a loop of symbolic links"),
    ("checkpoint is a dangling link", ["infer", "{slide}", "--checkpoint", "{ws}/dangling.pt", "--out",
                                       "{ws}/new_maps"], "{ws}/dangling.pt: a symbolic link to a missing target"),
]


def _check_bad_input(module, argv, expected, ws, brats_root, camelyon_root, capsys, monkeypatch):
    argv = _expand(argv, ws, brats_root, camelyon_root)
    before = _snapshot(ws, brats_root, camelyon_root)
    code, err = _run(module, argv, capsys, monkeypatch)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    if expected is not None:
        assert _expand([expected], ws, brats_root, camelyon_root)[0] in lines[0]
    assert _snapshot(ws, brats_root, camelyon_root) == before, "files were created, changed or deleted"


@pytest.mark.parametrize("argv,expected", [c[1:] for c in BRATS_CASES], ids=[c[0] for c in BRATS_CASES])
def test_brats_bad_inputs(argv, expected, ws, brats_root, camelyon_root, capsys, monkeypatch):
    _check_bad_input(brats_cli, argv, expected, ws, brats_root, camelyon_root, capsys, monkeypatch)


@pytest.fixture(scope="module")
def patch_list(ws, camelyon_patches):
    """The session's 64-pixel patch list, copied into the workspace (for the corrupt training state)."""
    (ws / "patches.json").write_bytes(Path(camelyon_patches).read_bytes())


@pytest.mark.parametrize("argv,expected", [c[1:] for c in METASTASIS_CASES], ids=[c[0] for c in METASTASIS_CASES])
def test_metastasis_bad_inputs(argv, expected, ws, patch_list, brats_root, camelyon_root, capsys, monkeypatch):
    _check_bad_input(metastasis_cli, argv, expected, ws, brats_root, camelyon_root, capsys, monkeypatch)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
@pytest.mark.parametrize("module,argv", [
    (brats_cli, ["validate", "--checkpoint", "{ws}/brats.pt", "--datalist", "{datalist}", "--data-root", "{brats}",
                 "--out", "{ws}/v.csv", "--device", "cuda"]),
    (metastasis_cli, ["infer", "{slide}", "--checkpoint", "{ws}/patho.pt", "--out", "{ws}/maps", "--device",
                      "cuda:1"]),
])
def test_missing_gpu(module, argv, ws, brats_root, camelyon_root, capsys, monkeypatch):
    _check_bad_input(module, argv, "this machine has 0 CUDA GPU(s)", ws, brats_root, camelyon_root, capsys,
                     monkeypatch)


def test_unexpected_errors_show_their_traceback(monkeypatch, capsys, tmp_path):
    def bug(*args, **kwargs):
        raise ValueError("an internal numpy-style error")

    monkeypatch.setattr(brats_cli, "find_cases", bug)
    code, err = _run(brats_cli, ["check-data", str(tmp_path)], capsys, monkeypatch)
    assert code == 1
    assert "Traceback" in err and "ValueError: an internal numpy-style error" in err
    assert "this is a bug" in err and not err.startswith("error:")

    def bug_os(*args, **kwargs):
        raise OSError("a library's OSError without a file")

    monkeypatch.setattr(brats_cli, "find_cases", bug_os)
    code, err = _run(brats_cli, ["check-data", str(tmp_path)], capsys, monkeypatch)
    assert code == 1 and "Traceback" in err


def test_ctrl_c_is_one_line(monkeypatch, capsys, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(brats_cli, "find_cases", interrupted)
    code, err = _run(brats_cli, ["check-data", str(tmp_path)], capsys, monkeypatch)
    assert code == 130
    assert len(err.strip().splitlines()) == 1 and "interrupted" in err and "Traceback" not in err


def test_unwritable_output_is_a_user_error(monkeypatch, capsys, tmp_path):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "out.csv"))

    monkeypatch.setattr(brats_cli, "find_cases", denied)
    code, err = _run(brats_cli, ["check-data", str(tmp_path)], capsys, monkeypatch)
    assert code == 2 and err.strip() == f"error: {tmp_path / 'out.csv'}: Permission denied"


def test_real_process_prints_one_line(tmp_path):
    """The installed command, end to end: one line, status 2, nothing written."""
    bindir = Path(sys.executable).parent
    result = subprocess.run([str(bindir / "brats-fl"), "make-job", "--out", str(tmp_path / "job"), "--set",
                             "amp=maybe"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: setting amp: expected true or false, got 'maybe'"]
    assert not (tmp_path / "job").exists()


def test_make_job_replaces_its_own_job_only(tmp_path, capsys, monkeypatch):
    out = tmp_path / "job"
    assert _run(brats_cli, ["make-job", "--out", str(out), "--rounds", "2"], capsys, monkeypatch)[0] == 0
    assert _run(brats_cli, ["make-job", "--out", str(out), "--rounds", "3"], capsys, monkeypatch)[0] == 0
    workflow = json.loads((out / "app/config/config_fed_server.json").read_text())["workflows"][0]
    assert workflow["args"]["num_rounds"] == 3
    assert _run(metastasis_cli, ["make-job", "--out", str(tmp_path / "empty")], capsys, monkeypatch)[0] == 0
    (tmp_path / "data").mkdir()
    (tmp_path / "data/scan.nii.gz").write_bytes(b"precious")
    code, err = _run(metastasis_cli, ["make-job", "--out", str(tmp_path / "data")], capsys, monkeypatch)
    assert code == 2 and (tmp_path / "data/scan.nii.gz").read_bytes() == b"precious"


def test_deploy_workspace_shapes(tmp_path):
    from medflare.deploy import check_workspace
    from medcore.errors import UserError

    poc = tmp_path / "poc"
    (poc / "data").mkdir(parents=True)
    (poc / "proj/prod_00/site-1").mkdir(parents=True)
    (poc / "proj/state").mkdir()
    (poc / "project.yml").write_text("name: proj\n")
    check_workspace(poc)  # what `nvflare poc prepare` leaves may be replaced
    (poc / "data/patients.csv").write_text("id\n1\n")
    with pytest.raises(UserError, match="is not a federation workspace"):
        check_workspace(poc)


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_text(tmp_path / "report.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_input_files_skip_partial_and_hidden(tmp_path):
    (tmp_path / "a.npy").write_bytes(b"")
    (tmp_path / ".a.npy.1234.part.npy").write_bytes(b"")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden/b.npy").write_bytes(b"")
    assert input_files(tmp_path, "*.npy") == [tmp_path / "a.npy"]
    assert input_files(tmp_path, "*.npy", recursive=True) == [tmp_path / "a.npy"]


def test_load_torch_refuses_pickled_objects(ws):
    from medcore.errors import UserError

    with pytest.raises(UserError) as err:
        load_torch(ws / "evil.pt")
    assert "refused for safety" in str(err.value) and "weights_only" not in str(err.value)
    assert set(load_torch(ws / "brats.pt")) == {"model"}


@pytest.mark.parametrize("tool,argv,limit_kb,named", [
    ("metastasis", ["make-data", "--out", "{out}", "--tumor", "1", "--normal", "0", "--width", "1024", "--height",
                    "1024"], 40, "{out}/training/tumor/tumor_001.tif"),
    ("brats-fl", ["make-data", "--out", "{out}", "--hgg", "1", "--lgg", "0", "--shape", "64", "64", "64"], 20,
     "{out}/HGG/"),
    ("brats-fl", ["make-job", "--out", "{out}"], 4, "{out}"),
], ids=["slide", "BraTS case", "job"])
def test_a_full_disk_or_file_size_limit_is_one_line_naming_the_output(tool, argv, limit_kb, named, tmp_path):
    """A write the file-size limit stops (as a full disk would: each writer reports it its own way, PyTorch and
    nibabel without the file) ends in one line naming the output, and leaves no partial file behind."""
    import resource

    out = tmp_path / "out"

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_kb * 1024, resource.RLIM_INFINITY))

    result = subprocess.run([str(Path(sys.executable).parent / tool), *[a.format(out=out) for a in argv]],
                            capture_output=True, text=True, preexec_fn=limit)
    errors = [line for line in result.stderr.splitlines() if line.strip() and " INFO " not in line]
    assert result.returncode == 2, result.stderr
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert errors[0].startswith(f"error: {named.format(out=out)}") and errors[0].endswith("File too large")
    assert not [p for p in tmp_path.rglob("*") if ".part" in p.name]


def test_a_federation_whose_sites_failed_ends_failed_naming_them(tmp_path, capsys, monkeypatch):
    """FLARE can end a job whose sites never started (a bad setting edited into the job) with status 0 and
    ``{}`` results: the report fails in one line naming each site's error and its log."""
    from medcore.errors import UserError
    from medflare.outcome import check_finished, site_errors

    results = tmp_path / "ws/server/simulate_job/cross_site_val/cross_val_results.json"
    results.parent.mkdir(parents=True)
    results.write_text("{}")
    (tmp_path / "ws/server/error_log.txt").write_text("")
    for site in ("site-1", "site-2"):
        (tmp_path / "ws" / site).mkdir()
        (tmp_path / "ws" / site / "error_log.txt").write_text(
            "2026-12-03 15:12:32,618 - JsonScanner - ERROR - Traceback (most recent call last):\n"
            '  File "/x/json_scanner.py", line 99, in _do_scan\n    node.processor.process_element(node)\n'
            "medcore.errors.SettingError: setting lr: must be > 0, got -1.0\n\nThe above exception was the direct "
            "cause of the following exception:\n\nTraceback (most recent call last):\n  File \"/x/y.py\", line 1\n"
            "nvflare.fuel.common.excepts.ConfigError: Error processing config\n")
    assert [(name, error) for name, error, _ in site_errors(tmp_path / "ws")] == [
        (site, "SettingError: setting lr: must be > 0, got -1.0") for site in ("site-1", "site-2")]
    code, err = _run(brats_cli, ["report", str(tmp_path / "ws")], capsys, monkeypatch)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{results}: holds no results, the run ended before any model was scored on a site: site-1 failed: " \
           f"SettingError: setting lr: must be > 0, got -1.0 (log: {tmp_path / 'ws/site-1/error_log.txt'}); " \
           "site-2 failed:" in err
    with pytest.raises(UserError, match=r"^brats_fl: the federation did not finish \(best_global_model was not "
                                        r"scored on site-2\): site-1 failed: SettingError"):
        check_finished(results, ["best_global_model was not scored on site-2"], tmp_path / "ws", "brats_fl")
    check_finished(results, [], tmp_path / "ws", "brats_fl")  # complete results: finished, whatever was logged
    with pytest.raises(UserError, match=r"\(no cross-site results\): see the sites' logs on their machines"):
        check_finished(None, [], None, "brats_fl")
