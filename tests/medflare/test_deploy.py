"""Real local federations: POC and provisioned (TLS) kits, the job loop through the FLARE API, failure paths, and
that nothing is left running."""

import json
import socket
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from brats_fl import cli
from brats_fl.datalist import write_datalists
from brats_fl.job import make_job
from medflare.algorithms import FederatedAlgorithm
from medflare.deploy import DeploymentError, Federation, Kits, poc_kits, wait_for_poc_stop
from medflare.workflow import CHECKPOINT_NAME, load_round_checkpoint

from tests.support import JOBS, TINY_BRATS_SHAPE


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def _project(tmp_path: Path) -> Path:
    """The committed BraTS project file on a free port (tests never use a fixed port)."""
    text = (JOBS.parent / "provisioning/brats_project.yml").read_text()
    text = text.replace("fed_learn_port: 8002", f"fed_learn_port: {_free_port()}")
    path = tmp_path / "project.yml"
    path.write_text(text)
    return path


def _running(pattern: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if pattern in line and "ps -eo" not in line]


def _tiny_job(brats_root, tmp_path, rounds=2, name="job", resume_from=None, algorithm=None, **train):
    lists = write_datalists(brats_root, tmp_path / "lists")
    return make_job(tmp_path / name, rounds=rounds, data_root=str(brats_root), datalist_dir=str(lists["site-1"].parent),
                    train={"crop": list(TINY_BRATS_SHAPE), "num_workers": 0, "num_threads": 1, **train},
                    resume_from=resume_from, algorithm=algorithm)


def _wait_for(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not (path.is_file() and text in path.read_text(errors="replace")):
        assert time.monotonic() < deadline, f"{text!r} did not appear in {path} within {timeout} s"
        time.sleep(0.2)


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
        kits = Kits(server="localhost", port=busy.getsockname()[1], clients=("site-1",), admin="admin@x.org",
                    prod_dir=tmp_path, host="localhost")
        federation = Federation(kits)
        with pytest.raises(DeploymentError, match="already in use"):
            with federation:
                pass
        assert federation.processes == {}
    with pytest.raises(DeploymentError, match="not a job folder"):
        federation.run_job(tmp_path)


def test_wait_for_poc_stop_waits_for_each_participants_kit_loop(tmp_path):
    """After FLARE stops a POC, a participant's kit loop may run up to 10 s longer; the wait ends when its process
    does, and names a participant still running at the timeout. A stale pid file (process gone) is not running."""
    ending, lasting = (subprocess.Popen(["sleep", seconds]) for seconds in ("1", "30"))
    reaper = threading.Thread(target=ending.wait)  # the kit loops are not our children: nothing stays a zombie
    reaper.start()
    try:
        for name, process in (("site-1", ending), ("site-2", lasting), ("server", None)):
            folder = tmp_path / f"example_project/prod_00/{name}"
            folder.mkdir(parents=True)
            (folder / "daemon_pid.fl").write_text(f"{process.pid if process else 2 ** 22 + 1}\n")
        (tmp_path / "example_project/prod_00/site-1/pid.fl").write_text("not a number")
        assert wait_for_poc_stop(tmp_path, timeout=3) == [tmp_path / "example_project/prod_00/site-2"]
        reaper.join()
        lasting.kill()
        lasting.wait()
        assert wait_for_poc_stop(tmp_path, timeout=3) == []
    finally:
        for process in (ending, lasting):
            process.kill()
            process.wait()


def test_sigterm_to_the_driving_process_still_tears_down(tmp_path):
    """`timeout`, a CI runner or `kill` end the driving process with SIGTERM: what it started is stopped too."""
    startup = tmp_path / "localhost/startup"
    startup.mkdir(parents=True)
    (startup / "sub_start.sh").write_text("exec sleep 301.25\n")  # a server that never opens its port
    script = (f"import sys; sys.path[:0] = {sys.path!r}\n"
              "from pathlib import Path\nfrom medflare.deploy import Federation, Kits\n"
              f"kits = Kits(server='localhost', port={_free_port()}, clients=('site-1',), admin='admin', "
              f"prod_dir=Path({str(tmp_path)!r}), host='localhost')\n"
              "with Federation(kits, connect_timeout=300):\n    pass\n")
    driver = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not _running("sleep 301.25"):
            assert time.monotonic() < deadline and driver.poll() is None, "the fake server did not start"
            time.sleep(0.1)
        driver.terminate()
        assert driver.wait(timeout=60) == 128 + 15
    finally:
        driver.kill()
    assert _running("sleep 301.25") == []


@pytest.mark.slow
def test_poc_loop_and_a_failing_job(brats_root, tmp_path):
    """POC kits, both clients connected, the job to FINISHED:COMPLETED with every model x site pair in the
    downloaded cross-site results; then a job whose sites cannot find their data ends as a clear error; nothing
    left."""
    job = _tiny_job(brats_root, tmp_path)
    broken = make_job(tmp_path / "broken", rounds=1, data_root=str(tmp_path / "no_such_data"),
                      train={"crop": list(TINY_BRATS_SHAPE)})  # the sites cannot find their data
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
def test_job_py_in_a_poc_federation(brats_root, tmp_path):
    """`jobs/brats_fl/job.py --env poc` as users run it: FLARE's PocEnv prepares a POC federation from the project
    file (mutual TLS, server on localhost), starts it, submits the job, waits, downloads the results and stops
    everything; the job ends FINISHED:COMPLETED and the cross-site report is printed."""
    lists = write_datalists(brats_root, tmp_path / "lists")
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "HOME": str(tmp_path / "home"),
           "NVFLARE_POC_WORKSPACE": str(tmp_path / "poc")}  # FLARE's POC config goes to HOME, not the user's
    result = subprocess.run([sys.executable, str(JOBS / "brats_fl/job.py"), "--env", "poc", "--project",
                             str(_project(tmp_path)), "--rounds", "1", "--crop", *map(str, TINY_BRATS_SHAPE),
                             "--data-root", str(brats_root), "--datalist-dir", str(lists["site-1"].parent),
                             "--set", "num_workers=0", "--set", "num_threads=1", "--timeout", "600"],
                            capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "AVE:" in result.stdout  # job.py reports only a job that ended FINISHED:COMPLETED
    downloaded = Path(re.search(r"brats_fl: results in (\S+)", result.stdout).group(1))
    results = json.loads(next(downloaded.rglob("cross_site_val/cross_val_results.json")).read_text())
    assert set(results) == {"site-1", "site-2"}
    assert _running(str(tmp_path / "poc")) == []


@pytest.mark.slow
def test_provisioned_tls_deployment_from_the_command_line(brats_root, tmp_path, capsys):
    """Provisioned mutual-TLS kits with the class allow-list of a real deployment, and a job that uses every
    federated variant at once: FedProx on the sites, FedAdam on the server, the SVT filter on the sites' updates."""
    job = _tiny_job(brats_root, tmp_path, fedprox_mu=0.01,
                    algorithm=FederatedAlgorithm(server_opt="adam", privacy="svt"))
    workspace = tmp_path / "kits"
    assert cli.main(["deploy", str(job), "--kits", "provision", "--project", str(_project(tmp_path)),
                     "--workspace", str(workspace), "--timeout", "600", "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert "Global best model selected via IntimeModelSelector" in out and "AVE:" in out
    assert (tmp_path / "report/report.csv").is_file()
    server = json.loads(next(workspace.rglob("localhost/startup/fed_server.json")).read_text())["servers"][0]
    assert server["connection_security"] == "mtls"
    logs = "".join(p.read_text(errors="replace") for p in workspace.rglob("log.txt"))
    assert "SVT acceptance completed" in logs and "FedOpt (torch.optim.Adam" in logs
    assert _running(str(workspace)) == []


@pytest.mark.slow
def test_server_restart_resumes_from_the_last_completed_round(brats_root, tmp_path):
    """The server is killed mid-job and started again: nvflare 2.9 does not restore the job, and the same job
    submitted with resume_from_job goes on from the round after the last checkpoint, with the global
    model, best score and the sites' local state, to the same last round and a complete cross-site validation."""
    rounds = 8
    job = _tiny_job(brats_root, tmp_path, rounds=rounds)
    workspace = tmp_path / "poc"
    kits = poc_kits(_project(tmp_path), workspace)
    server_dir = kits.prod_dir / kits.server
    with Federation(kits, connect_timeout=120) as federation:
        first = federation.session.submit_job(str(job))
        _wait_for(federation.log(kits.server), "Round 1 finished.", timeout=300)
        federation.restart_server(crash=True)
        # nvflare 2.9 neither restores nor closes it: the job's record stays RUNNING, its run folder is intact.
        assert federation.session.get_job_meta(first)["status"] != "FINISHED:COMPLETED"
        checkpoint = load_round_checkpoint(server_dir / first / "app_server" / CHECKPOINT_NAME)
        assert 1 <= checkpoint.round < rounds - 1 and checkpoint.end_round == rounds and checkpoint.job_id == first
        resumed = _tiny_job(brats_root, tmp_path, rounds=rounds, name="resumed", resume_from=first)
        result = federation.run_job(resumed, timeout=600)
    log = (result / "workspace/log.txt").read_text()
    started = [int(r) for r in re.findall(r"Round (\d+) started", log)]
    assert started == list(range(checkpoint.round + 1, rounds))
    assert f"resuming job {first} after its round {checkpoint.round}" in log
    second = result.name
    for site in kits.clients:
        site_log = (kits.prod_dir / site / second / "log.txt").read_text()
        assert f"took over the local state of job {first}" in site_log
        # Epochs go on from the interrupted run's: the sites' optimiser state and counters came along.
        epochs = [int(e) for e in re.findall(r"round \d+/%d epoch (\d+)" % rounds, site_log)]
        assert epochs and epochs[-1] == rounds and epochs[0] == checkpoint.round + 2
    results = json.loads((result / "workspace/cross_site_val/cross_val_results.json").read_text())
    for per_model in results.values():
        assert set(per_model) == {"SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt", "site-1", "site-2"}
    assert _running(str(workspace)) == []


def _heartbeat_timeout(kits: Kits, seconds: int) -> None:
    """The server declares a silent site dead after ``seconds`` (the kits' default is 600)."""
    local = kits.prod_dir / kits.server / "local"
    resources = json.loads((local / "resources.json.default").read_text())
    resources["servers"][0]["heart_beat_timeout"] = seconds
    (local / "resources.json").write_text(json.dumps(resources))


@pytest.mark.slow
def test_a_site_that_dies_mid_job_then_resuming_when_it_is_back(brats_root, tmp_path):
    """site-2 is killed mid-training. The server waits for its result until the site misses its heartbeats (here
    30 s, then FLARE's 10 s dead-client grace), then aborts the job: min_clients 2 can no longer be met. What was
    written stays intact: the server's last round checkpoint (archived with the job) and site-1's local state.
    With site-2 back, the job resumes from the last completed round and completes."""
    rounds = 8
    job = _tiny_job(brats_root, tmp_path, rounds=rounds)
    workspace = tmp_path / "poc"
    kits = poc_kits(_project(tmp_path), workspace)
    _heartbeat_timeout(kits, 30)
    with Federation(kits, env={"NVFLARE_DEAD_CLIENT_GRACE_PERIOD": "10"}, connect_timeout=120) as federation:
        with pytest.raises(DeploymentError, match="ended as FINISHED:EXECUTION_EXCEPTION"):
            first = federation.session.submit_job(str(job))
            _wait_for(federation.log(kits.server), "Round 1 finished.", timeout=300)
            federation.stop_participant("site-2", crash=True)
            federation.wait_for_job(first, timeout=300)
        server_log = federation.log(kits.server).read_text()
        assert "Remove the dead Client. Name: site-2" in server_log
        assert "Alive clients 1 < required min 2" in server_log
        site_state = kits.prod_dir / "site-1" / first / "models"
        assert {"local_state.pt", "local_best_model.pt"} <= {p.name for p in site_state.iterdir()}
        run_folder = federation.restore_run_folder(first)
        checkpoint = load_round_checkpoint(run_folder / "app_server" / CHECKPOINT_NAME)
        assert checkpoint.round >= 1 and checkpoint.job_id == first

        federation.start_participant("site-2")
        federation.wait_for_clients(kits.clients, time.monotonic() + 120)
        resumed = _tiny_job(brats_root, tmp_path, rounds=rounds, name="resumed", resume_from=first)
        result = federation.run_job(resumed, timeout=600)
    started = [int(r) for r in re.findall(r"Round (\d+) started", (result / "workspace/log.txt").read_text())]
    assert started == list(range(checkpoint.round + 1, rounds))
    results = json.loads((result / "workspace/cross_site_val/cross_val_results.json").read_text())
    assert set(results) == {"site-1", "site-2"}
    assert _running(str(workspace)) == []


def test_poc_env_takes_the_project_files_sites_and_admin(tmp_path):
    """FLARE's PocEnv for a job from a project file: its clients and admin (the single-site pathology project
    failed with PocEnv's default of two clients before), and a clear error when the file has too few sites."""
    from brats_fl.job import BratsRecipe
    from medcore.errors import UserError
    from medflare.recipe import poc_env
    from metastasis.job import MetastasisRecipe

    provisioning = JOBS.parent / "provisioning"
    env = poc_env(MetastasisRecipe(), provisioning / "pathology_project.yml")
    assert (env.clients, env.num_clients, env.username) == (["site-1"], 1, "admin@clara-open.org")
    assert poc_env(BratsRecipe(), provisioning / "brats_project.yml").clients == ["site-1", "site-2"]
    with pytest.raises(UserError, match="the job needs 2 site"):
        poc_env(BratsRecipe(), provisioning / "pathology_project.yml")
