"""Benchmark: what HD95 costs per full-size BraTS case (240x240x155 at 1 mm), computed on the whole volume and on
the masks' bounding box (what ``brats_fl.metrics.hd95`` does), against the Dice of the same masks.

Cases: synthetic release-geometry cases (``demodata.brats.synthesize_case``, HGG and LGG); the prediction is
the truth shifted by 2 voxels and dilated by one, per region, so that every distance is non-trivial. The two ways
must give the same distances (checked here too).

Run: .venv/bin/python benchmarks/hd95_cost.py   (under a minute on 2 cores)
Writes benchmarks/results/hd95_cost.json and .md.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from brats_fl.metrics import REGIONS, dice, hd95
from demodata.brats import RELEASE_SHAPE, synthesize_case

RESULTS = Path(__file__).resolve().parent / "results"


def whole_volume_hd95(pred: np.ndarray, truth: np.ndarray) -> float:
    """HD95 with the distance transforms over the whole volume (the computation before the bounding box)."""
    structure = ndimage.generate_binary_structure(3, 1)
    sp = pred & ~ndimage.binary_erosion(pred, structure=structure, border_value=0)
    st = truth & ~ndimage.binary_erosion(truth, structure=structure, border_value=0)
    to_truth = ndimage.distance_transform_edt(~st)[sp]
    to_pred = ndimage.distance_transform_edt(~sp)[st]
    return float(max(np.percentile(to_truth, 95), np.percentile(to_pred, 95)))


def _regions(seg: np.ndarray) -> list[np.ndarray]:
    return [np.isin(seg, (1, 4)), seg > 0, seg == 4]


def main() -> int:
    rows = []
    for grade, index in (("HGG", 0), ("HGG", 1), ("LGG", 0), ("LGG", 1)):
        _, seg = synthesize_case(grade, RELEASE_SHAPE, seed=0, index=index)
        for name, truth in zip(REGIONS, _regions(np.asarray(seg))):
            if not truth.any():
                continue
            pred = ndimage.binary_dilation(np.roll(truth, 2, axis=0))
            timings = {}
            for label, fn in (("whole_volume", whole_volume_hd95), ("bounding_box", hd95), ("dice", dice)):
                start = time.perf_counter()
                value = fn(pred, truth)
                timings[label] = (time.perf_counter() - start, value)
            assert abs(timings["whole_volume"][1] - timings["bounding_box"][1]) < 1e-9, timings
            rows.append({"case": f"{grade}{index}", "region": name, "voxels": int(truth.sum()),
                         "hd95_mm": timings["bounding_box"][1], "whole_volume_s": timings["whole_volume"][0],
                         "bounding_box_s": timings["bounding_box"][0], "dice_s": timings["dice"][0]})
    per_case = {k: sum(r[k] for r in rows) / len({r["case"] for r in rows})
                for k in ("whole_volume_s", "bounding_box_s", "dice_s")}
    result = {"shape": list(RELEASE_SHAPE), "machine": platform.platform(), "rows": rows,
              "seconds_per_case": per_case}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "hd95_cost.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["# HD95 per full-size BraTS case (240x240x155, 3 regions)", "",
             "| | seconds per case |", "| --- | --- |",
             f"| HD95, distance transforms over the whole volume | {per_case['whole_volume_s']:.2f} |",
             f"| HD95 on the masks' bounding box (brats_fl.metrics.hd95) | {per_case['bounding_box_s']:.2f} |",
             f"| Dice, for comparison | {per_case['dice_s']:.3f} |", "",
             "Both HD95 computations gave the same distances on every region. Per region:", "",
             "| case | region | voxels | HD95 mm | whole volume s | bounding box s |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['case']} | {r['region']} | {r['voxels']} | {r['hd95_mm']:.2f} | {r['whole_volume_s']:.2f} | "
              f"{r['bounding_box_s']:.3f} |" for r in rows]
    (RESULTS / "hd95_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
