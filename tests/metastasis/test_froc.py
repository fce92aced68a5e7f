"""Camelyon16 FROC and slide AUC against hand-computed cases, one rule at a time, and against MONAI's functions.

Mask pixels are 7.5 um here, so the 75 um growth is "distance below 5 pixels" and the ITC limit (275 um) is a major
axis of 36.7 pixels; detections are level-0 pixels, looked up at level 5 (x // 32, y // 32).
"""

import json

import numpy as np
import pytest
import tifffile

from metastasis.evaluation.detection import Detections, find_detections, read_detections, write_detections
from metastasis.evaluation.froc import EvalCase, evaluate_froc, evaluation_regions, froc_curve, froc_score, score_slide
from metastasis.evaluation.testset import read_mask

PIXEL_UM = 7.5


def _mask(shape=(200, 200), squares=()):
    mask = np.zeros(shape, np.uint8)
    for r, c, size in squares:
        mask[r:r + size, c:c + size] = 1
    return mask


def _at(points):
    """Detections at mask pixels: [(probability, row, col)] -> level-0 centres of those pixels."""
    p = np.array([q for q, _, _ in points], float)
    return Detections(p, np.array([c * 32 + 16 for _, _, c in points]), np.array([r * 32 + 16 for _, r, _ in points]))


def _case(name, points, mask=None, label=None, score=None):
    det = _at(points)
    return EvalCase(name, det, mask, PIXEL_UM, score if score is not None else (det.probability.max() if len(det)
                                                                                else 0.0),
                    int(mask is not None and mask.any()) if label is None else label)


def test_lesions_closer_than_75um_merge():
    close = evaluation_regions(_mask(squares=[(20, 20, 40), (20, 68, 40)]), PIXEL_UM)  # 8-pixel gap = 60 um
    apart = evaluation_regions(_mask(squares=[(20, 20, 40), (20, 72, 40)]), PIXEL_UM)  # 12 pixels = 90 um
    assert close.n == 1 and apart.n == 2 and not close.itc and not apart.itc
    # Growth: distance below 5 pixels; a 40-pixel square becomes 48 pixels wide.
    assert (apart.labels[40] > 0).sum() == 2 * 48


def test_itc_by_major_axis():
    regions = evaluation_regions(_mask(squares=[(10, 10, 40), (120, 120, 5), (150, 20, 28)]), PIXEL_UM)
    sizes = {k: (regions.labels == k).sum() for k in range(1, regions.n + 1)}
    small = [k for k, v in sizes.items() if v < 2000]
    # 5-px tumour grown to ~13 px: ITC; 28-px square grown to 36 px: major axis 4 sqrt(36^2/12) = 41.6 > 36.7: lesion
    assert regions.n == 3 and regions.itc == {min(small)}


def test_one_lesion_hit_several_times_counts_once_with_its_highest_probability():
    regions = evaluation_regions(_mask(squares=[(20, 20, 40)]), PIXEL_UM)
    result = score_slide("t", _at([(0.3, 30, 30), (0.8, 40, 40), (0.5, 50, 50), (0.4, 150, 150)]), regions)
    assert result.best.tolist() == [0.8] and result.hit.tolist() == [True] and result.fp_probs.tolist() == [0.4]
    assert result.row()["lesions_hit"] == 1 and result.row()["false_positives"] == 1


def test_hits_on_an_itc_are_neither_true_nor_false_positives():
    mask = _mask(squares=[(20, 20, 40), (150, 150, 4)])
    cases = [_case("t", [(0.9, 30, 30), (0.95, 151, 151)], mask)]
    result = evaluate_froc(cases)
    assert result.slides[0]["itc_detections"] == 1 and result.slides[0]["false_positives"] == 0
    assert result.n_lesions == 1


def test_normal_slides_and_all_zero_masks_count_false_positives_only():
    for mask in (None, np.zeros((200, 200), np.uint8)):  # an all-zero mask is a normal slide, no phantom region
        result = score_slide("n", _at([(0.9, 10, 10), (0.2, 100, 100)]), None if mask is None else
                             evaluation_regions(mask, PIXEL_UM))
        assert result.fp_probs.tolist() == [0.9, 0.2] and len(result.itc) == 0 and result.lesions == 0


def _two_slide_cases():
    # Tumour slide: lesions A (hit 0.9) and B (hit 0.6), a false positive at 0.7; normal slide: 0.8 and 0.5.
    mask = _mask(squares=[(10, 10, 40), (100, 100, 40)])
    return [_case("t", [(0.9, 20, 20), (0.6, 110, 110), (0.7, 180, 10)], mask),
            _case("n", [(0.8, 5, 5), (0.5, 60, 60)])]


def test_curve_by_hand_with_reference_conventions():
    cases = _two_slide_cases()
    results = [score_slide(c.name, c.detections, evaluation_regions(c.mask, PIXEL_UM) if c.mask is not None
                           else None) for c in cases]
    fp_rate, sensitivity = froc_curve(results, reference_conventions=True)
    # Pooled: TPs {0.9f, 0.6f}, FPs {0.7, 0.8, 0.5}; thresholds all but the lowest (0.5): 0.6f, 0.7, 0.8, 0.9f.
    assert fp_rate.tolist() == [1.0, 1.0, 0.5, 0.0, 0.0]
    assert sensitivity.tolist() == [1.0, 0.5, 0.5, 0.5, 0.0]
    fp_rate, sensitivity = froc_curve(results, reference_conventions=False)
    # Every value is a threshold, 0.5 included: 3 FPs over 2 slides, both lesions.
    assert fp_rate.tolist() == [1.5, 1.0, 1.0, 0.5, 0.0, 0.0]
    assert sensitivity.tolist() == [1.0, 1.0, 0.5, 0.5, 0.5, 0.0]


def test_score_interpolates_at_the_six_rates():
    score, at = froc_score(np.array([4.0, 2.0, 1.0, 0.0]), np.array([1.0, 0.75, 0.5, 0.0]))
    assert at == pytest.approx([0.125, 0.25, 0.5, 0.75, 1.0, 1.0])
    assert score == pytest.approx(3.625 / 6)


def test_convention_one_drops_the_lowest_hit_when_every_lesion_is_found():
    cases = [_case("t", [(0.9, 20, 20)], _mask(squares=[(10, 10, 40)]))]
    assert evaluate_froc(cases, reference_conventions=True).score == 0.0  # the only threshold is dropped
    assert evaluate_froc(cases, reference_conventions=False).score == 1.0
    # With a missed lesion, its 0 is the lowest pooled value and the hit's threshold survives.
    cases = [_case("t", [(0.9, 20, 20)], _mask(squares=[(10, 10, 40), (100, 100, 40)]))]
    result = evaluate_froc(cases)
    assert result.score == pytest.approx(0.5) and result.n_lesions == 2


def test_convention_two_float32_ties():
    mask = _mask(squares=[(10, 10, 40)])
    for value, split in ((0.7, True), (0.5, False)):  # float32 cannot hold 0.7 exactly; 0.5 it can
        cases = [_case("t", [(value, 20, 20), (value, 150, 150), (0.1, 160, 160)], mask)]
        results = [score_slide("t", cases[0].detections, evaluation_regions(mask, PIXEL_UM))]
        fp_rate, sensitivity = froc_curve(results, reference_conventions=True)
        # Thresholds (the lowest, 0.1, dropped): 0.7 as float32 (0.69999999) and as float64 apart, or one 0.5.
        if split:
            assert fp_rate.tolist() == [1.0, 1.0, 0.0] and sensitivity.tolist() == [1.0, 0.0, 0.0]
        else:
            assert fp_rate.tolist() == [1.0, 0.0] and sensitivity.tolist() == [1.0, 0.0]
        fp_rate, sensitivity = froc_curve(results, reference_conventions=False)
        assert fp_rate.tolist() == [2.0, 1.0, 0.0] and sensitivity.tolist() == [1.0, 1.0, 0.0]


def test_fast_regions_equal_whole_mask_regions_and_monai():
    from monai.apps.pathology.utils import compute_isolated_tumor_cells, compute_multi_instance_mask
    from monai.metrics import compute_fp_tp_probs, compute_froc_curve_data, compute_froc_score

    rng = np.random.default_rng(0)
    cases = []
    for index in range(6):
        mask = np.zeros((300, 400), np.uint8)
        for _ in range(rng.integers(1, 6)):
            r, c, h, w = rng.integers(0, 280), rng.integers(0, 380), rng.integers(2, 60), rng.integers(2, 60)
            mask[r:r + h, c:c + w] = 1
        mask[rng.integers(0, 300), rng.integers(0, 400)] = 1  # a single-pixel ITC
        fast = evaluation_regions(mask, PIXEL_UM)
        whole = evaluation_regions(mask, PIXEL_UM, whole_mask=True)
        # Same regions (labels may be numbered differently) and the same ITCs.
        pairs = {(a, b) for a, b in zip(fast.labels.ravel(), whole.labels.ravel())}
        assert len(pairs) == fast.n + 1 and fast.n == whole.n
        mapping = dict(pairs)
        assert {mapping[k] for k in fast.itc} == whole.itc
        points = [(float(np.round(rng.random(), 3)), int(rng.integers(0, 300)), int(rng.integers(0, 400)))
                  for _ in range(40)]
        cases.append(_case(f"s{index}", points, mask))
    ours = evaluate_froc(cases)
    # MONAI's building blocks of LesionFROC on the same masks and detections (tumour slides, 0/1 masks).
    fps, tps, targets = [], [], 0
    for case in cases:
        labels = compute_multi_instance_mask(case.mask, 75 / (PIXEL_UM * 2))
        itc = compute_isolated_tumor_cells(labels, 275 / PIXEL_UM)
        fp, tp, n = compute_fp_tp_probs(case.detections.probability, case.detections.y, case.detections.x,
                                        labels, itc, resolution_level=5)
        fps.extend(fp)
        tps.extend(tp)
        targets += n
    curve = compute_froc_curve_data(np.array(fps), np.array(tps, np.float32), targets, len(cases))
    assert ours.n_lesions == targets
    assert ours.score == pytest.approx(compute_froc_score(*curve), abs=1e-12)


def test_slide_auc_and_outputs(tmp_path):
    from metastasis.evaluation.froc import write_froc

    cases = _two_slide_cases() + [_case("n2", [(0.95, 5, 5)])]
    result = evaluate_froc(cases)
    assert result.slide_auc == pytest.approx(0.5)  # tumour 0.9 vs normals 0.8 (above) and 0.95 (below)
    paths = write_froc(result, tmp_path)
    assert paths["png"].stat().st_size > 5000
    assert paths["csv"].read_text().splitlines()[0].startswith("slide,tumor,regions,itcs,lesions,lesions_hit")
    assert '"froc_score"' in paths["json"].read_text()
    with pytest.raises(ValueError, match="no lesions"):
        evaluate_froc([_case("n", [(0.5, 1, 1)])])


def test_mask_files(tmp_path):
    mask = _mask(squares=[(10, 10, 20)])
    np.save(tmp_path / "a.npy", mask * 255)
    tifffile.imwrite(tmp_path / "b.tif", mask)
    assert np.array_equal(read_mask(tmp_path / "a.npy"), mask > 0)
    assert np.array_equal(read_mask(tmp_path / "b.tif"), mask > 0)
    (tmp_path / "c.tif").write_bytes(b"junk")
    with pytest.raises(ValueError, match="c.tif: cannot read the mask"):
        read_mask(tmp_path / "c.tif")
    with pytest.raises(ValueError, match="mask file missing"):
        read_mask(tmp_path / "none.npy")


def test_detections_nms_and_csv(tmp_path):
    probs = np.zeros((40, 40), np.float32)
    probs[10, 10], probs[10, 13], probs[30, 30], probs[5, 30] = 0.9, 0.8, 0.7, 0.3
    found = find_detections(probs, stride=32, origin=(16, 16), mpp=0.25, threshold=0.5, radius_um=32.0)  # 4 px
    assert found.probability.tolist() == pytest.approx([0.9, 0.7])
    assert found.x.tolist() == [16 + 32 * 10, 16 + 32 * 30] and found.y.tolist() == [16 + 32 * 10, 16 + 32 * 30]
    wide = find_detections(probs, 32, (16, 16), 0.25, threshold=0.2, radius_um=8.0)  # 1 px: all four peaks
    assert len(wide) == 4
    path = write_detections(tmp_path / "s.csv", found)
    assert path.read_text().splitlines() == ["0.900000,336,336", "0.700000,976,976"]
    again = read_detections(path)
    assert again.probability.tolist() == pytest.approx([0.9, 0.7]) and again.x.tolist() == [336, 976]
    (tmp_path / "h.csv").write_text("probability,x,y\n0.5,10,20\n")
    assert read_detections(tmp_path / "h.csv").y.tolist() == [20]
    (tmp_path / "e.csv").write_text("")
    assert len(read_detections(tmp_path / "e.csv")) == 0
    (tmp_path / "b.csv").write_text("0.5,10,20\n0.4;1;2\n")
    with pytest.raises(ValueError, match="b.csv:2: expected 'probability,x,y'"):
        read_detections(tmp_path / "b.csv")


@pytest.mark.parametrize("radius", [0.0, 0.5, 1.0, 1.5, 2 ** 0.5, 2.3, 4.7, 9.99, 19.3, 40.0])
def test_the_disc_maximum_equals_the_footprint_filter(radius):
    """Local maxima over a disc, computed row by row, are exactly scipy's footprint filter of the same disc (the
    filter this replaced, which costs radius^2 per pixel and failed on a radius of 10^12)."""
    from scipy import ndimage

    from metastasis.evaluation.detection import _disc_maximum

    rng = np.random.default_rng(int(radius * 10))
    for shape in ((37, 53), (1, 30), (30, 1), (2, 2)):
        probs = rng.random(shape).astype(np.float32)
        probs[probs < 0.6] = 0  # plateaus of zeros, as on glass
        r = int(np.floor(radius))
        yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
        expected = ndimage.maximum_filter(probs, footprint=xx ** 2 + yy ** 2 <= radius ** 2, mode="constant",
                                          cval=-np.inf)
        assert np.array_equal(_disc_maximum(probs, radius), expected), shape


def test_a_suppression_radius_beyond_the_map_keeps_the_highest_peak():
    probs = np.zeros((50, 60), np.float32)
    probs[3, 4], probs[40, 50], probs[20, 20] = 0.7, 0.9, 0.8
    for radius_um in (1e12, 1e300):
        found = find_detections(probs, stride=32, origin=(16, 16), mpp=0.25, threshold=0.5, radius_um=radius_um)
        assert found.probability.tolist() == pytest.approx([0.9]) and found.x.tolist() == [16 + 32 * 50]
    found = find_detections(probs, stride=32, origin=(16, 16), mpp=1e-12, threshold=0.5, radius_um=150)
    assert len(found) == 1


def test_bootstrap_intervals_by_hand():
    """The percentile bootstrap: zero width for identical values, the hand-computed case, strata kept, NaN
    resamples left out and counted, the same seed the same interval, and no interval from one item."""
    from medcore.bootstrap import stratified_bootstrap

    values = np.array([0.7, 0.7, 0.7, 0.7])
    same = stratified_bootstrap(lambda idx: float(values[idx].mean()), [0, 0, 1, 1])
    assert (same.estimate, same.low, same.high, same.resamples) == (0.7, 0.7, 0.7, 2000)
    # the mean of two items 0 and 1: resampled means 0, 0.5, 1 with chances 1/4, 1/2, 1/4, so the 2.5% and 97.5%
    # quantiles of 2,000 resamples are 0 and 1 (a tail of 50 resamples, where about 500 are expected at each end)
    pair = np.array([0.0, 1.0])
    interval = stratified_bootstrap(lambda idx: float(pair[idx].mean()), [0, 0])
    assert (interval.estimate, interval.low, interval.high) == (0.5, 0.0, 1.0)
    assert stratified_bootstrap(lambda idx: float(pair[idx].mean()), [0, 0], seed=3) == \
        stratified_bootstrap(lambda idx: float(pair[idx].mean()), [0, 0], seed=3)
    strata = np.array([0, 0, 0, 1, 1])
    kept = stratified_bootstrap(lambda idx: float((strata[idx] == 1).sum()), strata, resamples=200)
    assert kept.low == kept.high == 2.0  # each resample keeps two items of stratum 1
    undefined = stratified_bootstrap(lambda idx: float("nan") if (idx == 0).all() else 1.0, [0, 0], resamples=400)
    assert 50 < undefined.undefined < 150 and undefined.low == undefined.high == 1.0  # about 1 in 4 is (0, 0)
    one = stratified_bootstrap(lambda idx: 0.5, [0])
    assert one.low is None and "fewer than two" in one.text()


def test_froc_and_auc_carry_slide_bootstrap_intervals(tmp_path):
    from metastasis.evaluation.froc import FROC_KIND, write_froc

    mask = _mask(squares=[(10, 10, 40), (100, 100, 40)])
    cases = [_case(f"t{i}", [(0.9 - 0.1 * i, 20, 20), (0.3 + 0.1 * i, 180, 10)], mask) for i in range(4)] + \
        [_case(f"n{i}", [(0.2 + 0.15 * i, 5, 5)]) for i in range(4)]
    result = evaluate_froc(cases, seed=1, excluded=["Test_049"])
    for key, estimate in (("froc_score", result.score), ("slide_auc", result.slide_auc)):
        interval = result.intervals[key]
        assert interval.low <= estimate <= interval.high and interval.resamples == 2000 and interval.low < interval.high
    assert evaluate_froc(cases, seed=1).intervals == result.intervals
    assert "FROC score" in result.summary() and FROC_KIND in result.summary() and "excluded: Test_049" in \
        result.summary() and "95% CI" in result.summary()
    saved = json.loads(write_froc(result, tmp_path)["json"].read_text())
    assert saved["froc_kind"] == "all slides (challenge rules)" and saved["excluded_slides"] == ["Test_049"]
    assert saved["intervals"]["slide_auc"]["strata"] == "tumour / normal slides"
    assert evaluate_froc(cases, resamples=0).intervals == {}


def _scored(tmp_path, name, cases, **options):
    """``cases`` evaluated and written as ``evaluate`` writes them: the folder of froc.json."""
    from metastasis.evaluation.froc import write_froc

    write_froc(evaluate_froc(cases, **options), tmp_path / name)
    return tmp_path / name


def _test_set(shift=0.0, scale=1.0):
    """Four tumour slides (two lesions each, one of them found with a probability that falls by slide) and four
    normal ones; ``scale`` multiplies every probability (a monotone change: the same ranks), ``shift`` raises the
    normal slides' false positives."""
    mask = _mask(squares=[(10, 10, 40), (100, 100, 40)])
    return [_case(f"t{i}", [(scale * (0.9 - 0.1 * i), 20, 20), (scale * (0.3 + 0.1 * i), 180, 10)], mask)
            for i in range(4)] + [_case(f"n{i}", [(scale * (0.2 + 0.15 * i + shift), 5, 5)]) for i in range(4)]


@pytest.mark.parametrize("conventions", [True, False])
def test_saved_slide_scores_give_the_evaluation_numbers_again(tmp_path, conventions):
    from metastasis.evaluation.froc import read_slide_scores

    cases = _test_set()
    result = evaluate_froc(cases, reference_conventions=conventions, excluded=["Test_049"])
    scores, excluded = read_slide_scores(_scored(tmp_path, "a", cases, reference_conventions=conventions,
                                                 excluded=["Test_049"]) / "froc.json")
    every = np.arange(len(cases))
    assert scores.froc(every) == result.score and scores.auc(every) == result.slide_auc
    assert scores.reference_conventions is conventions and excluded == ["Test_049"]
    assert scores.intervals(2000, 0) == evaluate_froc(cases, reference_conventions=conventions).intervals


def test_compare_is_paired_on_the_same_slides(tmp_path):
    """Scaling every probability by 0.5 keeps every rank, so on each resample both evaluations give the same FROC
    and AUC: the paired difference is 0 with a zero-width interval (unpaired resampling would spread it); and a
    model whose normal slides score far lower separates the classes on every resample: its AUC difference is never
    negative."""
    from metastasis.evaluation.froc import compare_froc, read_slide_scores

    a, _ = read_slide_scores(_scored(tmp_path, "a", _test_set()))
    same, _ = read_slide_scores(_scored(tmp_path, "half", _test_set(scale=0.5)))
    for key, comparison in compare_froc(a, same).items():
        assert (comparison.difference.estimate, comparison.difference.low, comparison.difference.high) == (0, 0, 0)
        assert comparison.p_value == 1.0, key
    better, _ = read_slide_scores(_scored(tmp_path, "better", _test_set(shift=-0.5)))
    auc = compare_froc(better, a, seed=3)["slide_auc"]
    assert auc.difference.estimate == pytest.approx(evaluate_froc(_test_set(shift=-0.5)).slide_auc
                                                    - evaluate_froc(_test_set()).slide_auc)
    # Ties (both 1.0 on a resample without the one misranked pair) count on both sides: p stays 1 at 8 slides.
    assert auc.difference.estimate > 0 and auc.difference.low >= 0 and auc.p_value == 1.0
    froc = compare_froc(better, a, seed=3)["froc_score"]
    assert froc.difference.estimate == pytest.approx(evaluate_froc(_test_set(shift=-0.5)).score
                                                     - evaluate_froc(_test_set()).score)


def test_compare_command_and_its_refusals(tmp_path, capsys):
    from metastasis.cli import main

    a, half = _scored(tmp_path, "a", _test_set()), _scored(tmp_path, "half", _test_set(scale=0.5))
    assert main(["compare", str(a), str(half / "froc.json"), "--out", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    assert "A minus B, paired on the same 8 slides" in out and "FROC score (all slides (challenge rules)): +0.0000" in out
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["slides"] == 8 and saved["froc_score"]["p_value"] == 1.0 and saved["difference"] == "a - b"

    fewer = _scored(tmp_path, "fewer", _test_set()[1:])
    other_truth = _scored(tmp_path, "truth", [_case(c.name, [], _mask(squares=[(10, 10, 40)]) if c.label else None)
                                              for c in _test_set()])
    plain = _scored(tmp_path, "plain", _test_set(), reference_conventions=False)
    left_out = _scored(tmp_path, "left_out", _test_set(), excluded=["Test_049"])
    old = tmp_path / "old.json"
    old.write_text(json.dumps({k: v for k, v in json.loads((a / "froc.json").read_text()).items()
                               if k != "per_slide"}))
    for b, message in ((fewer, "different slides (only in A: ['t0']"), (other_truth, "slide t0: its ground truth"),
                       (plain, "reference conventions"), (left_out, "left out"), (old, "older version")):
        assert main(["compare", str(a), str(b)]) == 2, b
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
