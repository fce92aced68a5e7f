"""Real local federations: POC and provisioned (TLS) kits, the job loop through the FLARE API, failure paths, and
that nothing is left running."""

import json
import socket
import subprocess
from pathlib import Path

import pytest

from brats_fl import cli
from brats_fl.datalist import write_datalists
from brats_fl.job import make_job
from medcore.deploy import DEFAULT_PROJECTS, DeploymentError, Federation, Kits, poc_kits

from conftest import TINY_BRATS_SHAPE


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def _project(tmp_path: Path) -> Path:
    """The committed BraTS project file on a free port (tests never use a fixed port)."""
    text = DEFAULT_PROJECTS["brats"].read_text().replace("fed_learn_port: 8002", f"fed_learn_port: {_free_port()}")
    path = tmp_path / "project.yml"
    path.write_text(text)
    return path


def _running(pattern: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if pattern in line and "ps -eo" not in line]


def _tiny_job(brats_root, tmp_path, **train):
    lists = write_datalists(brats_root, tmp_path / "lists")
    return make_job(tmp_path / "job", rounds=2, data_root=str(brats_root), datalist_dir=str(lists["site-1"].parent),
                    train={"crop": list(TINY_BRATS_SHAPE), "num_workers": 0, "num_threads": 1, **train})


def test_missing_or_incomplete_kits(tmp_path):
    with pytest.raises(DeploymentError, match="startup kit folder missing"):
        Kits.find(tmp_path / "none")
    (tmp_path / "prod_00/site-1/startup").mkdir(parents=True)
    (tmp_path / "prod_00/site-1/startup/fed_client.json").write_text("{}")
    with pytest.raises(DeploymentError, match="expected one server kit"):
        Kits.find(tmp_path / "prod_00")


def test_port_in_use_stops_before_starting_anything(tmp_path):
    with socket.socket() as busy:
        busy.bind(("localhost", 0))
        busy.listen()
        kits = Kits(tmp_path, "localhost", ("site-1",), "admin@x.org", "localhost", busy.getsockname()[1])
        federation = Federation(kits)
        with pytest.raises(DeploymentError, match="already in use"):
            with federation:
                pass
        assert federation.processes == {}
    with pytest.raises(DeploymentError, match="not a job folder"):
        federation.run_job(tmp_path)


@pytest.mark.slow
def test_poc_loop_and_a_failing_job(brats_root, tmp_path):
    """POC kits, both clients connected, the job to FINISHED:COMPLETED with every model x site pair in the
    downloaded cross-site results; then a job with a configuration error ends as a clear error; nothing left."""
    job = _tiny_job(brats_root, tmp_path)
    broken = tmp_path / "broken"
    make_job(broken, rounds=1, data_root=str(brats_root), train={"crop": list(TINY_BRATS_SHAPE)})
    client_config = broken / "app/config/config_fed_client.json"
    client_config.write_text(client_config.read_text().replace("brats_fl.learner.BratsLearner",
                                                               "brats_fl.learner.NoSuchLearner"))
    workspace = tmp_path / "poc"
    kits = poc_kits(_project(tmp_path), workspace)
    assert kits.host == "localhost" and kits.clients == ("site-1", "site-2")
    with Federation(kits, connect_timeout=120) as federation:
        assert federation.connected_clients() == ["site-1", "site-2"]
        result = federation.run_job(job, timeout=600)
        with pytest.raises(DeploymentError, match=r"ended as (FINISHED|ABORTED|FAILED)"):
            federation.run_job(broken, timeout=300)
    results = json.loads(next(result.rglob("cross_site_val/cross_val_results.json")).read_text())
    assert set(results) == {"site-1", "site-2"}
    for per_model in results.values():
        assert set(per_model) == {"SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt", "site-1", "site-2"}
    assert _running(str(workspace)) == []


@pytest.mark.slow
def test_provisioned_tls_deployment_from_the_command_line(brats_root, tmp_path, capsys):
    job = _tiny_job(brats_root, tmp_path)
    workspace = tmp_path / "kits"
    assert cli.main(["deploy", str(job), "--kits", "provision", "--project", str(_project(tmp_path)),
                     "--workspace", str(workspace), "--timeout", "600", "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert "Global best model selected via IntimeModelSelector" in out and "AVE:" in out
    assert (tmp_path / "report/report.csv").is_file()
    server = json.loads(next(workspace.rglob("localhost/startup/fed_server.json")).read_text())["servers"][0]
    assert server["connection_security"] == "mtls"
    assert _running(str(workspace)) == []
