"""The random augmentations in MONAI's shape: array transforms with ``prob``, their dictionary forms, seeded draws."""

import numpy as np
import pytest
import torch

from metastasis.data.stain import HEDJitter, StainVariation
from metastasis.data.transforms import ColorJitter, ColorJitterd, HEDJitterd, StainVariationd


@pytest.fixture
def image():
    generator = torch.Generator().manual_seed(0)
    return 0.3 + 0.6 * torch.rand((3, 32, 32), generator=generator)


def test_at_prob_one_no_coin_is_tossed_so_seeded_draws_are_those_of_before(image):
    """A seeded chain must draw what it drew before the transforms had a ``prob``: the parameters are the first
    draws of the transform's own random state."""
    jitter = HEDJitter(0.05).set_random_state(seed=3)
    jitter(image)
    reference = np.random.RandomState(3)
    assert np.array_equal(jitter.alpha, reference.uniform(0.95, 1.05, 2))
    assert np.array_equal(jitter.beta, reference.uniform(-0.05, 0.05, 2))
    colour = ColorJitter().set_random_state(seed=4)
    colour(image)
    assert colour.factors[0] == np.random.RandomState(4).uniform(1 - 64 / 255, 1 + 64 / 255)


@pytest.mark.parametrize("make", [lambda p: HEDJitter(0.2, prob=p), lambda p: StainVariation(1.0, prob=p),
                                  lambda p: ColorJitter(prob=p)])
def test_prob_decides_how_often_the_image_changes(make, image):
    assert torch.equal(make(0.0)(image), image)
    sometimes = make(0.5).set_random_state(seed=0)
    changed = sum(not torch.equal(sometimes(image), image) for _ in range(200))
    assert 70 <= changed <= 130  # binomial(200, 0.5): outside this range with probability below 1e-4
    with pytest.raises(ValueError, match="prob must be between 0 and 1"):
        make(1.5)


def test_randomize_false_applies_the_last_draw_again(image):
    jitter = StainVariation(1.0).set_random_state(seed=1)
    first = jitter(image)
    assert torch.equal(jitter(image, randomize=False), first)
    assert not torch.equal(jitter(image), first)


@pytest.mark.parametrize("wrapper, array", [(HEDJitterd(["a", "b"], 0.2), HEDJitter(0.2)),
                                            (StainVariationd(["a", "b"], 1.0), StainVariation(1.0)),
                                            (ColorJitterd(["a", "b"], hue=0.1), ColorJitter(hue=0.1))])
def test_dictionary_form_applies_one_draw_to_every_key(wrapper, array, image):
    wrapper.set_random_state(seed=5)
    array.set_random_state(seed=5)
    out = wrapper({"a": image, "b": image.clone(), "label": 1})
    assert torch.equal(out["a"], out["b"]) and not torch.equal(out["a"], image)
    assert torch.equal(out["a"], array(image))  # the same draw as the array form seeded alike
    assert out["label"] == 1


def test_dictionary_form_at_prob_zero_leaves_the_keys_as_they_are(image):
    out = HEDJitterd("a", 0.2, prob=0.0)({"a": image})
    assert torch.equal(out["a"], image)
