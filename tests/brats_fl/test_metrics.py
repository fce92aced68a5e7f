import numpy as np
import pytest
from monai.transforms import ConvertToMultiChannelBasedOnBratsClasses

from brats_fl.metrics import HD95_EMPTY, dice, hd95, region_scores, regions_to_labels


def labels_to_regions(seg):
    """What the training pipeline does to labels (brats_fl.transforms)."""
    return np.asarray(ConvertToMultiChannelBasedOnBratsClasses()(np.asarray(seg)))


def test_regions_follow_the_brats_definition():
    seg = np.array([0, 1, 2, 4]).reshape(1, 1, 4)
    tc, wt, et = labels_to_regions(seg)
    assert tc.ravel().tolist() == [False, True, False, True]  # TC = 1, 4
    assert wt.ravel().tolist() == [False, True, True, True]  # WT = 1, 2, 4
    assert et.ravel().tolist() == [False, False, False, True]  # ET = 4
    # Labels -> regions -> labels is the identity.
    seg = np.random.default_rng(0).choice([0, 1, 2, 4], size=(6, 5, 4))
    assert np.array_equal(regions_to_labels(labels_to_regions(seg)), seg)


def test_regions_to_labels_imposes_nesting():
    tc = np.array([0, 1, 1, 0], bool)
    wt = np.array([1, 1, 0, 0], bool)
    et = np.array([0, 0, 1, 1], bool)
    assert regions_to_labels(np.stack([tc, wt, et])).tolist() == [2, 1, 4, 4]


def test_dice_hand_cases_and_empty_convention():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert dice(a, b) == 1.0  # empty prediction on empty truth
    b[0, 0] = True
    assert dice(b, a) == 0.0  # something predicted where there is nothing
    assert dice(a, b) == 0.0  # nothing predicted where there is tumour
    a[0, :2] = True  # 2 voxels, 1 overlapping
    assert dice(a, b) == pytest.approx(2 * 1 / 3)


def test_hd95_hand_cases():
    truth = np.zeros((20, 20, 20), bool)
    truth[5:10, 5:10, 5:10] = True
    assert hd95(truth, truth) == 0.0
    shifted = np.roll(truth, 3, axis=0)
    assert hd95(shifted, truth) == pytest.approx(3.0)
    assert hd95(shifted, truth, spacing=(2.0, 1.0, 1.0)) == pytest.approx(6.0)
    empty = np.zeros_like(truth)
    assert hd95(empty, empty) == 0.0
    assert hd95(empty, truth) == HD95_EMPTY == pytest.approx(373.13, abs=0.01)


def test_region_scores_mean():
    truth = labels_to_regions(np.array([[[0, 1, 2, 4]]]))
    pred = labels_to_regions(np.array([[[0, 2, 2, 4]]]))
    scores = region_scores(pred, truth)
    assert scores["TC"] == pytest.approx(2 / 3) and scores["WT"] == 1.0 and scores["ET"] == 1.0
    assert scores["mean"] == pytest.approx((2 / 3 + 2) / 3)


def test_hd95_equals_monai_on_random_masks_also_at_the_volume_edge():
    """HD95 works on the masks' bounding box: the same value as MONAI's whole-volume computation, also for masks
    that touch the volume's faces, with anisotropic voxels."""
    import torch
    from monai.metrics import compute_hausdorff_distance

    rng = np.random.default_rng(3)
    cases = []
    for _ in range(4):
        pred = np.zeros((30, 26, 22), bool)
        truth = np.zeros_like(pred)
        for mask in (pred, truth):
            lo = rng.integers(0, 12, 3)
            hi = lo + rng.integers(3, 14, 3)
            mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
            mask &= rng.random(mask.shape) > 0.1  # ragged surfaces, holes
        cases.append((pred, truth))
    edge = np.zeros((30, 26, 22), bool)
    edge[:5, 20:, :] = True  # touches three faces
    cases.append((edge, np.roll(edge, 2, axis=0)))
    for pred, truth in cases:
        expected = compute_hausdorff_distance(torch.as_tensor(pred)[None, None], torch.as_tensor(truth)[None, None],
                                              percentile=95, spacing=(1.0, 1.5, 2.5))
        assert hd95(pred, truth, spacing=(1.0, 1.5, 2.5)) == pytest.approx(float(expected), rel=1e-6)
