"""Benchmark: Camelyon16 FROC evaluation of 100 slides, this project's evaluation vs the whole-mask computation
vs MONAI's LesionFROC building blocks, with the scores they give.

Ground truth: 100 level-5 masks of 3000 x 6000 pixels (a 96k x 192k slide at level 5), 40 tumour slides with 1 to
6 lesions each (ellipses from ITC size to macro-metastases), 60 normal slides; 100 detections per slide (10,000 in
all), a third of the tumour slides' detections placed on lesions. Timed: everything from the masks and detections
to the score (regions, ITCs, hits, curve, score); mask creation is not timed.

* ``ours``: :func:`metastasis.evaluation.froc.evaluate_froc` (morphology only in boxes around tumour, none on normal slides);
* ``whole_mask``: the same rules with the distance transform and hole filling over every whole tumour mask, as the
  challenge's evaluation code does (``whole_mask=True``);
* ``monai``: ``compute_multi_instance_mask`` + ``compute_isolated_tumor_cells`` + ``compute_fp_tp_probs`` +
  ``compute_froc_curve_data`` + ``compute_froc_score`` on every mask, as ``LesionFROC.evaluate`` runs them
  (without its file reading and NMS). On an all-zero mask they label a small phantom region (at the array's
  corner) and call it an ITC, so a normal slide's detections there would be dropped instead of counted as false
  positives; for the score comparison the normal slides' detections go to MONAI as false positives directly,
  while its timing includes its morphology on all 100 masks, as LesionFROC spends it.

Run: .venv/bin/python benchmarks/froc_evaluation.py   (about 5 minutes on 2 cores)
Writes benchmarks/results/froc_evaluation.json and .md.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SHAPE = (6000, 3000)  # level 5 (rows, cols)
PIXEL_UM = 0.243 * 32


def make_cases(n_tumour: int = 40, n_normal: int = 60, per_slide: int = 100, seed: int = 0):
    from metastasis.evaluation.detection import Detections
    from metastasis.evaluation.froc import EvalCase

    rng = np.random.default_rng(seed)
    cases = []
    rows, cols = np.ogrid[:SHAPE[0], :SHAPE[1]]
    for index in range(n_tumour + n_normal):
        tumour = index < n_tumour
        mask = None
        centres = []
        if tumour:
            mask = np.zeros(SHAPE, np.uint8)
            for _ in range(rng.integers(1, 7)):
                r, c = rng.integers(200, SHAPE[0] - 200), rng.integers(200, SHAPE[1] - 200)
                a = rng.choice([1.0, 5.0, 15.0, 60.0]) * rng.uniform(0.7, 1.3)  # semi-axis in pixels (~8 um..0.5 mm)
                b = a * rng.uniform(0.4, 1.0)
                box = (slice(int(r - a - 2), int(r + a + 3)), slice(int(c - a - 2), int(c + a + 3)))
                rr, cc = rows[box[0]], cols[:, box[1]]
                mask[box] |= (((rr - r) / a) ** 2 + ((cc - c) / b) ** 2 <= 1).astype(np.uint8)
                centres.append((r, c))
        n_hits = per_slide // 3 if tumour else 0
        hit_rc = [centres[i % len(centres)] for i in range(n_hits)] if tumour else []
        r = np.concatenate([np.array([h[0] for h in hit_rc], int), rng.integers(0, SHAPE[0], per_slide - n_hits)])
        c = np.concatenate([np.array([h[1] for h in hit_rc], int), rng.integers(0, SHAPE[1], per_slide - n_hits)])
        probs = np.round(rng.random(per_slide), 4)
        det = Detections(probs, c * 32 + 16, r * 32 + 16)
        cases.append(EvalCase(f"slide_{index:03d}", det, mask, PIXEL_UM, float(probs.max()), int(tumour)))
    return cases


def run_monai(cases):
    from monai.apps.pathology.utils import compute_isolated_tumor_cells, compute_multi_instance_mask
    from monai.metrics import compute_fp_tp_probs, compute_froc_curve_data, compute_froc_score

    fps, tps, targets = [], [], 0
    for case in cases:
        mask = case.mask if case.mask is not None else np.zeros(SHAPE, np.uint8)
        labels = compute_multi_instance_mask(mask, 75 / (PIXEL_UM * 2))
        itc = compute_isolated_tumor_cells(labels, 275 / PIXEL_UM)
        if case.mask is None:  # the normal slide's phantom region: count its detections as FPs, as the rules say
            fps.extend(case.detections.probability)
            continue
        fp, tp, n = compute_fp_tp_probs(case.detections.probability, case.detections.y, case.detections.x,
                                        labels, itc, resolution_level=5)
        fps.extend(fp)
        tps.extend(tp)
        targets += n
    curve = compute_froc_curve_data(np.array(fps), np.array(tps, np.float32), targets, len(cases))
    return float(compute_froc_score(*curve))


def main() -> None:
    import warnings

    from metastasis.evaluation.froc import evaluate_froc

    warnings.filterwarnings("ignore", category=FutureWarning)
    start = time.perf_counter()
    cases = make_cases()
    make_s = time.perf_counter() - start
    timings, scores = {}, {}
    for name, run in (("ours", lambda: evaluate_froc(cases, resamples=0).score),
                      ("whole_mask", lambda: evaluate_froc(cases, whole_mask=True, resamples=0).score),
                      ("monai", lambda: run_monai(cases))):
        start = time.perf_counter()
        scores[name] = run()
        timings[name] = round(time.perf_counter() - start, 2)
        print(name, timings[name], "s, score", scores[name], flush=True)
    n_det = sum(len(c.detections) for c in cases)
    result = {
        "machine": {"platform": platform.platform()},
        "slides": len(cases), "tumour_slides": sum(c.label for c in cases), "mask_shape": list(SHAPE),
        "detections": n_det, "lesions": evaluate_froc(cases).n_lesions, "make_cases_s": round(make_s, 1),
        "seconds": timings, "scores": scores,
        "speedup_vs_monai": round(timings["monai"] / timings["ours"], 1),
        "speedup_vs_whole_mask": round(timings["whole_mask"] / timings["ours"], 1),
        "identical_scores": len({round(v, 12) for v in scores.values()}) == 1,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "froc_evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "# Camelyon16 FROC evaluation of 100 slides", "",
        f"{result['slides']} slides ({result['tumour_slides']} tumour) with level-5 masks of {SHAPE[1]}x{SHAPE[0]}, "
        f"{result['lesions']} lesions, {n_det} detections; {result['machine']['platform']}.", "",
        "| evaluation | seconds | FROC score |", "| --- | --- | --- |",
        *[f"| {k} | {timings[k]} | {scores[k]:.6f} |" for k in timings], "",
        f"Ours is **{result['speedup_vs_monai']}x** faster than MONAI's LesionFROC functions and "
        f"{result['speedup_vs_whole_mask']}x faster than the whole-mask computation; identical scores: "
        f"{result['identical_scores']}.", "",
    ]
    (RESULTS / "froc_evaluation.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
