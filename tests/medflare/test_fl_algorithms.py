"""Beyond FedAvg: FedProx's proximal term, FedOpt's server step and the privacy filters, each against a hand
computation, and the job configurations that switch them on."""

import json

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model import make_model_learnable
from nvflare.app_common.app_constant import AppConstants
from nvflare.fuel.utils.class_utils import instantiate_class

from brats_fl import cli as brats_cli
from brats_fl.job import make_job as make_brats_job
from medcore.errors import UserError
from medcore.training import EpochTrainer
from medflare.algorithms import MODEL_ID, FederatedAlgorithm
from metastasis import cli as metastasis_cli
from metastasis.job import make_job as make_metastasis_job

from tests.support import component, load_job_configs


class _SquaredError(EpochTrainer):
    def compute_loss(self, batch):
        x, y = batch
        return ((self.model(x).squeeze(1) - y) ** 2).mean(), x.shape[0]


def _one_step(mu: float, anchor: list[float], start: list[float], lr: float = 0.1) -> tuple[np.ndarray, float]:
    model = torch.nn.Linear(2, 1, bias=False)
    trainer = _SquaredError(model, torch.optim.SGD(model.parameters(), lr=lr), torch.device("cpu"), amp=False,
                            proximal_mu=mu)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([anchor]))
    trainer.set_anchor()  # the round's global model
    with torch.no_grad():
        model.weight.copy_(torch.tensor([start]))  # as if local steps had moved it
    data = torch.utils.data.TensorDataset(torch.tensor([[1.0, 2.0]]), torch.tensor([3.0]))
    stats = trainer.train_epoch(data)
    return model.weight.detach().numpy()[0], stats.loss


def test_fedprox_term_changes_the_update_as_computed_by_hand():
    w0, w, x, y, lr, mu = np.array([0.5, -0.5]), np.array([1.0, 1.0]), np.array([1.0, 2.0]), 3.0, 0.1, 0.5
    task_grad = 2 * (w @ x - y) * x  # d/dw (w.x - y)^2 = 2 (w.x - y) x = [0, 0]: the data term alone is at rest
    expected = w - lr * (task_grad + mu * (w - w0))  # + d/dw mu/2 ||w - w0||^2
    got, loss = _one_step(mu, list(w0), list(w), lr)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert not np.allclose(got, w)
    # mu = 0 is plain training, and the recorded loss is the data term alone in both cases.
    plain, plain_loss = _one_step(0.0, list(w0), list(w), lr)
    np.testing.assert_allclose(plain, w - lr * task_grad, rtol=1e-6)
    assert loss == plain_loss == pytest.approx((w @ x - y) ** 2)


class _Engine:
    def __init__(self, components):
        self.components = components

    def get_component(self, name):
        return self.components.get(name)

    def build_component(self, spec):
        return instantiate_class(spec["path"], spec.get("args", {}))


def _context(engine, global_weights=None) -> FLContext:
    ctx = FLContext()
    ctx.set_prop(ReservedKey.ENGINE, engine, private=True, sticky=False)
    if global_weights is not None:
        ctx.set_prop(AppConstants.GLOBAL_MODEL, make_model_learnable(global_weights, {}), private=True, sticky=False)
    return ctx


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
        self.register_buffer("stat", torch.tensor([10.0]))


def test_fedopt_server_step_is_a_hand_computed_adam_step(tmp_path):
    job = make_brats_job(tmp_path / "job", algorithm=FederatedAlgorithm(server_opt="adam", server_lr=0.01))
    server, client = load_job_configs(job)
    spec = component(server, "shareable_generator")
    assert spec["args"]["source_model"] == MODEL_ID
    assert component(server, "persistor")["args"]["model"] == MODEL_ID
    assert component(server, MODEL_ID)["path"] == "brats_fl.model.BratsSegResNet"
    assert component(server, "aggregator")["args"]["expected_data_kind"] == "WEIGHT_DIFF"
    assert component(client, "learner")["args"]["send_weight_diff"] is True

    model = _Tiny()
    generator = instantiate_class(spec["path"], {**spec["args"], "device": "cpu"})
    engine = _Engine({MODEL_ID: model})
    generator.handle_event(EventType.START_RUN, _context(engine))
    diff = {"w": np.array([0.002, -0.0005], np.float32), "stat": np.array([-1.0], np.float32)}
    reply = DXO(data_kind=DataKind.WEIGHT_DIFF, data=diff).to_shareable()
    learnable = generator.shareable_to_learnable(reply, _context(engine, {"w": np.array([1.0, 2.0], np.float32),
                                                                           "stat": np.array([10.0], np.float32)}))
    # Adam's first step with the change as minus the gradient g: m = (1 - b1) g, v = (1 - b2) g^2, bias-corrected
    # m^ = g, v^ = g^2, so w <- w - lr g / (|g| + eps) = w + lr d / (|d| + eps); lr 0.01, eps 1e-3.
    d = diff["w"].astype(np.float64)
    expected = np.array([1.0, 2.0]) + 0.01 * d / (np.abs(d) + 1e-3)
    np.testing.assert_allclose(np.asarray(learnable["weights"]["w"]), expected, rtol=1e-6)
    assert np.asarray(learnable["weights"]["w"])[0] == pytest.approx(1.0 + 0.01 * 2 / 3, rel=1e-6)
    # Buffers are not optimised: they take the averaged change, as in FedAvg.
    np.testing.assert_allclose(np.asarray(learnable["weights"]["stat"]), [9.0])


def test_fedavgm_uses_sgd_with_momentum(tmp_path):
    job = make_metastasis_job(tmp_path / "job", algorithm=FederatedAlgorithm(server_opt="avgm", server_momentum=0.9))
    server, _ = load_job_configs(job)
    args = component(server, "shareable_generator")["args"]["optimizer_args"]
    assert args == {"path": "torch.optim.SGD", "args": {"lr": 1.0, "momentum": 0.9}, "config_type": "dict"}
    # The recipe persistor keeps the sites' recipe, and the model component the patch size and the seed.
    assert component(server, MODEL_ID)["args"] == {"patch_size": 224, "seed": 0}


def _filter(job):
    _, client = load_job_configs(job)
    (chain,) = client["task_result_filters"]
    assert chain["tasks"] == ["train"]
    (spec,) = chain["filters"]
    # data_kinds: the filters' own default, which FLARE's job API writes out
    assert spec["args"].pop("data_kinds") == ["WEIGHT_DIFF", "WEIGHTS"]
    return spec, instantiate_class(spec["path"], spec["args"])


def test_percentile_filter_in_job_changes_the_update_as_defined(tmp_path):
    job = make_brats_job(tmp_path / "job", algorithm=FederatedAlgorithm(
        privacy="percentile", privacy_args={"percentile": 50, "gamma": 0.01}))
    spec, privacy = _filter(job)
    assert spec["path"].endswith("PercentilePrivacy") and spec["args"] == {"percentile": 50, "gamma": 0.01}
    raw = np.array([0.001, -0.004, 0.03, -0.05, 0.002, 0.0], np.float32)
    dxo = DXO(data_kind=DataKind.WEIGHT_DIFF, data={"w": raw.copy(), "n": np.array(3.0)},
              meta={MetaKey.NUM_STEPS_CURRENT_ROUND: 2})
    out = from_shareable(privacy.process(dxo.to_shareable(), FLContext())).data
    # Per step (/2): [5e-4, -2e-3, 0.015, -0.025, 1e-3, 0]; the 50th percentile of |.| is 1.5e-3: smaller changes
    # become 0, the rest are clipped to +-0.01, then scaled back by 2 steps. Scalars pass unchanged.
    np.testing.assert_allclose(out["w"], [0, -0.004, 0.02, -0.02, 0, 0], atol=1e-9)
    assert float(out["n"]) == 3.0


def test_svt_filter_in_job_has_the_brats_example_defaults_and_sparsifies(tmp_path):
    job = make_brats_job(tmp_path / "job", algorithm=FederatedAlgorithm(privacy="svt"))
    spec, privacy = _filter(job)
    assert spec["path"].endswith("SVTPrivacy")
    assert spec["args"] == {"fraction": 0.9, "epsilon": 0.001, "noise_var": 1.0, "gamma": 1e-4}
    np.random.seed(0)
    raw = np.random.default_rng(1).normal(0, 1e-3, 1000).astype(np.float32)
    dxo = DXO(data_kind=DataKind.WEIGHT_DIFF, data={"w": raw.copy()}, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: 1})
    out = from_shareable(privacy.process(dxo.to_shareable(), FLContext())).data["w"]
    assert out.shape == raw.shape and not np.allclose(out, raw)
    assert 0 < np.count_nonzero(out) <= 900  # at most the fraction 0.9 of the entries is released


def test_svt_spends_what_its_accountant_says_per_round():
    """What the SVT filter spends per round at the job's defaults (NVFlare's BraTS example: fraction 0.9, epsilon
    0.001, noise_var 1.0), by nvflare's pure-DP accountant: epsilon 0.001 for choosing the entries, plus one
    noise_var for each entry released, so 0.001 + ceil(0.9 n) for an update of n entries (4,232,005.001 for the
    SegResNet's 4,702,227). The guarantee per round is that large; docs/brats.md says so."""
    privacy = FederatedAlgorithm(privacy="svt").privacy_filter()
    diff = {"w": np.full(10, 1e-5, np.float32), "b": np.full(3, -1e-5, np.float32)}
    for round_ in (1, 2):
        dxo = DXO(data_kind=DataKind.WEIGHT_DIFF, data=dict(diff), meta={MetaKey.NUM_STEPS_CURRENT_ROUND: 2})
        out = from_shareable(privacy.process(dxo.to_shareable(), FLContext()))
        spent = out.get_meta_prop("svt_privacy_budget")
        assert spent["n_upload"] == 12 and spent["epsilon_total"] == pytest.approx(0.001 + 12 * 1.0)
        assert out.get_meta_prop("svt_privacy_accountant")["epsilon_total"] == pytest.approx(round_ * 12.001)


def test_algorithm_options_are_checked_before_a_job_is_written(tmp_path):
    for bad, message in (({"server_opt": "sgd"}, "server optimiser 'sgd'"),
                         ({"server_lr": 0.1}, "needs a server optimiser"),
                         ({"server_opt": "adam", "server_momentum": 0.5}, "momentum applies to avgm"),
                         ({"privacy": "svt", "privacy_args": {"epsilom": 1}}, r"unknown setting\(s\) \['epsilom'\]"),
                         ({"privacy_args": {"epsilon": 1}}, "need a filter")):
        with pytest.raises(UserError, match=message):
            FederatedAlgorithm(**bad)
    assert not list(tmp_path.iterdir())


def test_make_job_options_combine_in_both_tools(tmp_path, capsys):
    assert brats_cli.main(["make-job", "--out", str(tmp_path / "b"), "--fedprox-mu", "0.01", "--privacy", "svt",
                           "--privacy-set", "epsilon=0.01", "--server-opt", "avgm", "--server-lr", "0.5"]) == 0
    server, client = load_job_configs(tmp_path / "b")
    learner = component(client, "learner")["args"]
    assert learner["train"]["fedprox_mu"] == 0.01 and learner["send_weight_diff"] is True
    assert client["task_result_filters"][0]["filters"][0]["args"]["epsilon"] == 0.01
    generator = component(server, "shareable_generator")["args"]["optimizer_args"]
    assert generator["args"] == {"lr": 0.5, "momentum": 0.6}
    # FedOpt's model component is the network the sites train; one privacy chain.
    assert brats_cli.main(["make-job", "--out", str(tmp_path / "b2"), "--server-opt", "adam",
                           "--crop", "64", "64", "48", "--privacy", "percentile"]) == 0
    server2, client2 = load_job_configs(tmp_path / "b2")
    assert component(server2, MODEL_ID)["args"]["crop"] == [64, 64, 48]
    assert [c["filters"][0]["path"].rsplit(".", 1)[1] for c in client2["task_result_filters"]] == ["PercentilePrivacy"]
    # FedAvg stays as it was: weights, no filter.
    assert metastasis_cli.main(["make-job", "--out", str(tmp_path / "m"), "--fedprox-mu", "0.1"]) == 0
    server3, client3 = load_job_configs(tmp_path / "m")
    assert component(client3, "learner")["args"]["train"]["fedprox_mu"] == 0.1
    assert "send_weight_diff" not in component(client3, "learner")["args"]
    assert component(server3, "aggregator")["args"]["expected_data_kind"] == "WEIGHTS"
    assert not client3.get("task_result_filters")
    assert json.loads((tmp_path / "m/meta.json").read_text())["min_clients"] == 1


def test_make_job_rejects_bad_algorithm_options(tmp_path, capsys):
    assert brats_cli.main(["make-job", "--out", str(tmp_path / "j"), "--server-lr", "0.1"]) == 2
    assert "needs a server optimiser" in capsys.readouterr().err
    assert brats_cli.main(["make-job", "--out", str(tmp_path / "j"), "--privacy", "svt",
                           "--privacy-set", "sigma=1"]) == 2
    assert "unknown setting(s) ['sigma']" in capsys.readouterr().err
    assert not (tmp_path / "j").exists()
