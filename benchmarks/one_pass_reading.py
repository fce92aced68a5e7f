"""Benchmark: what reading each input once saves, at the real data sets' sizes.

**BraTS** (cases of the release's 240x240x155 voxels, generated): before, a site's datalist was checked by decoding
every file (``check_files(read_data=True)``), then the cache decoded every file again; after, the up-front check
reads the headers only (``read_data=False``) and the cache checks the values where it decodes them
(:class:`brats_fl.transforms.LoadCased`). Measured per case: the full check, the header check, and the cache fill
with and without the value checks (their cost inside the one decode).

**Metastasis** (a probability map of a 100k x 200k slide at stride 32, 3125 x 6250 float32): before, ``detect``
decoded each map twice (the check, then the work) and ``evaluate`` once more for its maximum; after, ``detect``
decodes it once after checking its JSON and header (``describe_map``) and ``evaluate`` reads the maximum from the
JSON. Measured: one full load (``load_map``), one description (``describe_map``).

Each timing is the best of ``--repeats``. Run: .venv/bin/python benchmarks/one_pass_reading.py [--cases 3]
(about 3 minutes on 2 cores, most of it generating the cases). Writes benchmarks/results/one_pass_reading.json and
.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "custom"))
from brats_fl.data import MODALITIES, RELEASE_SHAPE, case_files, check_files  # noqa: E402
from brats_fl.transforms import compact_transforms  # noqa: E402
from demodata.brats import generate_dataset  # noqa: E402
from metastasis.inference.geometry import MapGeometry  # noqa: E402
from metastasis.inference.maps import describe_map, load_map  # noqa: E402
from monai.transforms import Compose  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def brats(root: Path, repeats: int) -> dict:
    cases = sorted(p for p in (root / "HGG").iterdir() if p.is_dir())
    entries = [{"image": [str(case_files(c)[m]) for m in MODALITIES], "label": str(case_files(c)["seg"])}
               for c in cases]
    unchecked = Compose([_plain_load()] + compact_transforms()[1:])
    checked = Compose(compact_transforms())
    rows = []
    for case, entry in zip(cases, entries):
        rows.append({
            "case": case.name,
            "full_check_s": best(lambda: check_files(case_files(case), case.name, read_data=True), repeats),
            "header_check_s": best(lambda: check_files(case_files(case), case.name, read_data=False), repeats),
            "cache_fill_s": best(lambda: unchecked(dict(entry)), repeats),
            "cache_fill_with_value_checks_s": best(lambda: checked(dict(entry)), repeats),
        })
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "case"}
    before = mean["full_check_s"] + mean["cache_fill_s"]
    after = mean["header_check_s"] + mean["cache_fill_with_value_checks_s"]
    return {"cases": rows, "mean": mean, "before_s_per_case": before, "after_s_per_case": after,
            "saved_s_per_case": before - after, "saved_per_285_cases_min": (before - after) * 285 / 60}


def _plain_load():
    """MONAI's loading alone, as the cache did it before (no value checks)."""
    import torch
    from monai import transforms as mt

    keys = ["image", "label"]
    return mt.Compose([mt.LoadImaged(keys=keys, reader="NibabelReader", image_only=True),
                       mt.EnsureChannelFirstd(keys=keys), mt.EnsureTyped(keys="image", dtype=torch.float32)])


def maps(folder: Path, repeats: int) -> dict:
    geometry = MapGeometry(32, 224, (100_000, 200_000))
    rng = np.random.default_rng(0)
    probs = rng.random(geometry.shape, dtype=np.float32)
    npy = folder / "slide.npy"
    np.save(npy, probs)
    npy.with_suffix(".json").write_text(json.dumps({"slide": "/data/slide.tif", **geometry.to_dict(), "mpp": 0.243,
                                                    "max_probability": float(probs.max())}))
    load = best(lambda: load_map(npy), repeats)
    describe = best(lambda: describe_map(npy), repeats)
    return {"map_shape": list(geometry.shape), "load_map_s": load, "describe_map_s": describe,
            "detect_before_s": 2 * load, "detect_after_s": describe + load,
            "evaluate_before_s": load, "evaluate_after_s": describe}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=3, help="BraTS cases of the release's size (default: 3)")
    parser.add_argument("--repeats", type=int, default=2, help="timings per measurement, the best counts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate_dataset(Path(tmp) / "brats", args.cases, 0, shape=RELEASE_SHAPE, seed=0)
        result = {"machine": platform.processor() or platform.machine(), "brats": brats(Path(tmp) / "brats",
                                                                                         args.repeats),
                  "maps": maps(Path(tmp), args.repeats)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "one_pass_reading.json").write_text(json.dumps(result, indent=2) + "\n")
    b, m = result["brats"], result["maps"]
    lines = ["# Reading each input once", "",
             f"`benchmarks/one_pass_reading.py --cases {args.cases} --repeats {args.repeats}`, "
             f"{time.strftime('%Y-%m-%d')}, 2 CPU cores.", "",
             "## BraTS, per case of 240x240x155 voxels (means)", "",
             "| step | seconds |", "| --- | --- |",
             f"| full check (every file decoded; before, up front) | {b['mean']['full_check_s']:.2f} |",
             f"| header check (after, up front) | {b['mean']['header_check_s']:.3f} |",
             f"| cache fill, no value checks (before) | {b['mean']['cache_fill_s']:.2f} |",
             f"| cache fill with the value checks (after) | {b['mean']['cache_fill_with_value_checks_s']:.2f} |",
             f"| **check + cache, before -> after** | **{b['before_s_per_case']:.2f} -> {b['after_s_per_case']:.2f}** |",
             "",
             f"Saved: {b['saved_s_per_case']:.2f} s per case, {b['saved_per_285_cases_min']:.1f} minutes over the "
             "release's 285 cases (each site's start, and every `validate` and `train`).", "",
             f"## Metastasis, a probability map of {m['map_shape'][0]} x {m['map_shape'][1]} (100k x 200k slide, "
             "stride 32)", "",
             "| command | before (s) | after (s) |", "| --- | --- | --- |",
             f"| detect (per map) | {m['detect_before_s']:.3f} | {m['detect_after_s']:.3f} |",
             f"| evaluate (per map) | {m['evaluate_before_s']:.3f} | {m['evaluate_after_s']:.4f} |", ""]
    (RESULTS / "one_pass_reading.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
