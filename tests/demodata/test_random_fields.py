import numpy as np

from demodata.random_fields import item_rng, smooth_field


def test_smooth_field_statistics_and_smoothness():
    field = smooth_field((96, 80, 64), item_rng(1, 2), 4)
    assert field.shape == (96, 80, 64) and field.dtype == np.float32
    assert abs(float(field.mean())) < 1e-4 and abs(float(field.std()) - 1) < 1e-4
    # ~16 voxels per cell: neighbouring voxels differ by a small fraction of the field's spread, also at the edges.
    for axis in range(3):
        assert np.abs(np.diff(field, axis=axis)).max() < 0.5


def test_item_rng_is_order_independent():
    a = item_rng(5, 1, 2).random(4)
    item_rng(5, 9, 9).random(100)
    assert np.array_equal(a, item_rng(5, 1, 2).random(4))
    assert not np.array_equal(a, item_rng(5, 2, 1).random(4))
    assert np.array_equal(smooth_field((20, 30), item_rng(0, 1), 4), smooth_field((20, 30), item_rng(0, 1), 4))
