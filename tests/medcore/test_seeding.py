"""Reproducible runs: the recipe's seed fixes a model's initial weights (a federation's first global model, built by
the server) and every epoch's draws, whatever else ran before in the process."""

import torch

from brats_fl.model import BratsSegResNet
from medcore.seeding import seeded
from medcore.training import EpochTrainer
from metastasis.model import PatchClassifier


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_seed_fixes_the_initial_weights_and_leaves_the_callers_stream_alone():
    torch.rand(3)  # whatever the process drew before
    stream = torch.get_rng_state()
    first = BratsSegResNet(crop=(16, 16, 16), seed=3).state_dict()
    torch.rand(5)
    second = BratsSegResNet(crop=(16, 16, 16), seed=3).state_dict()
    assert _equal(first, second)
    assert not _equal(first, BratsSegResNet(crop=(16, 16, 16), seed=4).state_dict())
    assert _equal(PatchClassifier(32, seed=3).state_dict(), PatchClassifier(32, seed=3).state_dict())
    torch.set_rng_state(stream)
    with seeded(7):
        torch.rand(4)
    assert torch.equal(torch.get_rng_state(), stream)  # the block's draws did not move the caller's stream
    # The same weights as seeding torch globally before building (what the project did before seeded models).
    torch.manual_seed(3)
    assert _equal(BratsSegResNet(crop=(16, 16, 16)).state_dict(), first)


class _Regression(EpochTrainer):
    def compute_loss(self, batch):
        x, y = batch
        return ((self.model(x).squeeze(1) - y) ** 2).mean(), x.shape[0]


def _trainer(seed: int) -> _Regression:
    with seeded(0):
        model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 1))
    return _Regression(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.device("cpu"), amp=False,
                       batch_size=2, seed=seed)


def _data() -> torch.utils.data.TensorDataset:
    with seeded(1):
        return torch.utils.data.TensorDataset(torch.randn(6, 4), torch.randn(6))


def test_epoch_draws_depend_on_the_seed_and_epoch_alone():
    """Shuffling and dropout masks of an epoch are the same whatever the process drew before, and a resumed run
    (a new trainer with the saved state) trains its next epoch exactly as the uninterrupted run did."""
    runs = []
    for noise in (1, 50):
        trainer = _trainer(seed=2)
        for _ in range(2):
            torch.rand(noise)  # other work in the process between epochs
            trainer.train_epoch(_data())
        runs.append(trainer.model.state_dict())
    assert _equal(*runs)

    first = _trainer(seed=2)
    first.train_epoch(_data())
    resumed = _trainer(seed=2)
    resumed.model.load_state_dict(first.model.state_dict())
    resumed.load_state_dict(first.state_dict())
    resumed.train_epoch(_data())
    assert _equal(resumed.model.state_dict(), runs[0])

    other = _trainer(seed=3)
    for _ in range(2):
        other.train_epoch(_data())
    assert not _equal(other.model.state_dict(), runs[0])
