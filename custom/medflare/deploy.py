"""Run a real FLARE federation on this machine: server and clients as separate processes started from their startup
kits (mutual TLS), a job submitted, watched and downloaded through the FLARE API, and everything torn down.

Kits come from ``nvflare poc prepare`` (:func:`poc_kits`) or ``nvflare provision`` (:func:`provision_kits`) on a
project file whose server is named ``localhost``, so the server listens on the loopback interface only.

:class:`Federation` owns its processes: each participant runs ``startup/sub_start.sh --once`` (the FLARE process
itself, without the kit's restart loop) in its own process group, so leaving the ``with`` block (normally or on an
error) asks the server to shut the system down and then stops whatever is left of each group. Nothing is left
running behind a failed run.

A finished monitor is not success: :meth:`Federation.run_job` checks the job's final status and raises
:class:`DeploymentError` with the status and the end of the server's log unless it is ``FINISHED:COMPLETED``.

Why not FLARE's ``PocEnv``/``ProdEnv`` (what ``jobs/*/job.py --env poc|prod`` uses, :func:`medflare.recipe.run_recipe`):
``PocEnv`` stops a running POC and deletes its workspace before it prepares a new one, which a workspace check
here must refuse for folders the project did not write; it starts the participants through their kits' restart
loops and keeps no handle on their processes, so a failed run cannot be torn down process by process, nor a
server or site killed and restarted on purpose (the reliability tests do both); and it waits a fixed time for the
participants instead of checking that every client has connected. ``ProdEnv`` submits to a federation someone
else runs; a local one must be started first, which is what this module does.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Mapping, Sequence

from medcore.errors import UserError, first_line
from medcore.files import atomic_directory, check_replaceable, mark_output

__all__ = ["DeploymentError", "Kits", "ProjectFile", "read_project", "project_server", "check_workspace", "poc_kits",
           "provision_kits",
           "port_in_use", "check_port_free", "wait_for_poc_stop", "Federation"]

logger = logging.getLogger(__name__)

COMPLETED = "FINISHED:COMPLETED"


class DeploymentError(UserError):
    """A deployment step failed; the message says which and why (with a log excerpt where there is one)."""


@dataclasses.dataclass(frozen=True)
class ProjectFile:
    """What a provisioning project file names: the server, its ``fed_learn_port``, the clients, the project admin."""

    server: str
    port: int
    clients: tuple[str, ...]
    admin: str


@dataclasses.dataclass(frozen=True)
class Kits(ProjectFile):
    """The startup kits of one project, ``prod_dir/<participant>/startup``, its server reached at ``host``."""

    prod_dir: Path
    host: str

    @classmethod
    def find(cls, prod_dir: str | Path) -> "Kits":
        """Read a provisioned ``prod_NN`` folder; a missing or incomplete kit is an error naming the folder."""
        prod_dir = Path(prod_dir)
        if not prod_dir.is_dir():
            raise DeploymentError(f"{prod_dir}: startup kit folder missing")
        servers, clients, admins = [], [], []
        for part in sorted(p for p in prod_dir.iterdir() if p.is_dir()):
            startup = part / "startup"
            if (startup / "fed_server.json").is_file():
                servers.append(part.name)
            elif (startup / "fed_client.json").is_file():
                clients.append(part.name)
            elif (startup / "fed_admin.json").is_file():
                admins.append(part.name)
        if len(servers) != 1 or not clients or not admins:
            raise DeploymentError(f"{prod_dir}: expected one server kit, client kits and an admin kit; found server "
                                  f"{servers}, clients {clients}, admins {admins}")
        config = json.loads((prod_dir / servers[0] / "startup/fed_server.json").read_text())
        host, _, port = config["servers"][0]["service"]["target"].rpartition(":")
        return cls(server=servers[0], port=int(port), clients=tuple(clients), admin=admins[0], prod_dir=prod_dir,
                   host=host)


def _run(cmd: Sequence[str], env: Mapping[str, str] | None = None, what: str = "") -> str:
    result = subprocess.run(list(cmd), capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300)
    if result.returncode != 0:
        raise DeploymentError(f"{what or cmd[0]} failed (exit {result.returncode}), its output:",
                              (result.stdout + result.stderr).strip()[-2000:])
    return result.stdout


def _nvflare() -> str:
    return str(Path(sys.executable).parent / "nvflare")


def _latest_prod(root: Path) -> Path:
    prods = sorted(root.glob("*/prod_*"), key=lambda p: p.stat().st_mtime)
    if not prods:
        raise DeploymentError(f"{root}: no prod_NN startup kit folder was written")
    return prods[-1]


#: What a deploy workspace is marked as (:func:`medcore.files.mark_output`).
WORKSPACE_OUTPUT = "federation workspace"



def read_project(project: str | Path) -> ProjectFile:
    """Read a provisioning project file, with errors naming the file."""
    import yaml

    project = Path(project)
    if not project.is_file():
        raise DeploymentError(f"{project}: project file missing")
    try:
        content = yaml.safe_load(project.read_text(encoding="utf-8"))
        kinds = {kind: [p for p in content["participants"] if p.get("type") == kind]
                 for kind in ("server", "client", "admin")}
        server = kinds["server"][0]
        admins = [p["name"] for p in kinds["admin"] if p.get("role") == "project_admin"] or \
            [p["name"] for p in kinds["admin"]]
        return ProjectFile(str(server["name"]), int(server.get("fed_learn_port", 8002)),
                           tuple(str(p["name"]) for p in kinds["client"]), str(admins[0]) if admins else "")
    except (yaml.YAMLError, UnicodeDecodeError, KeyError, IndexError, TypeError, ValueError, AttributeError) as err:
        raise DeploymentError(f"{project}: not a provisioning project file with a server participant "
                              f"({type(err).__name__}: {first_line(err, empty='')})") from None


def project_server(project: str | Path) -> tuple[str, int]:
    """The server name and ``fed_learn_port`` of a provisioning project file, with errors naming the file."""
    read = read_project(project)
    return read.server, read.port


def _is_poc_workspace(path: Path) -> bool:
    """The exact shape ``nvflare poc prepare`` leaves: ``project.yml``, an empty ``data/`` and one project folder
    holding only ``prod_NN`` kits and FLARE's ``state``."""
    entries = {p.name for p in path.iterdir()}
    projects = [p for p in path.iterdir() if p.is_dir() and any(p.glob("prod_*"))]
    if "project.yml" not in entries or len(projects) != 1 or not entries <= {"project.yml", "data", projects[0].name}:
        return False
    data = path / "data"
    return (not data.exists() or data.is_dir() and not any(data.iterdir())) and all(
        p.is_dir() and (p.name.startswith("prod_") or p.name == "state") for p in projects[0].iterdir())


def check_workspace(workspace: str | Path) -> None:
    """Refuse a ``--workspace`` that this project did not make (before anything is written)."""
    check_replaceable(workspace, WORKSPACE_OUTPUT, _is_poc_workspace)


def poc_kits(project: str | Path, workspace: str | Path) -> Kits:
    """``nvflare poc prepare -i project`` into ``workspace``, replacing an earlier one this project made there
    (anything else in ``workspace`` is refused: ``poc prepare --force`` deletes the whole folder)."""
    workspace = Path(workspace).resolve()
    check_workspace(workspace)
    _run([_nvflare(), "poc", "prepare", "-i", str(project), "--force"], {"NVFLARE_POC_WORKSPACE": str(workspace)},
         "nvflare poc prepare")
    mark_output(workspace, WORKSPACE_OUTPUT)
    return Kits.find(_latest_prod(workspace))


def provision_kits(project: str | Path, workspace: str | Path) -> Kits:
    """``nvflare provision -p project -w workspace``: TLS startup kits in a new ``prod_NN`` (``workspace``: new,
    empty or made by this project)."""
    workspace = Path(workspace).resolve()
    check_workspace(workspace)
    workspace.mkdir(parents=True, exist_ok=True)
    mark_output(workspace, WORKSPACE_OUTPUT)
    _run([_nvflare(), "provision", "-p", str(project), "-w", str(workspace)], what="nvflare provision")
    return Kits.find(_latest_prod(workspace))


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def check_port_free(host: str, port: int, where: str = "the project file") -> None:
    """A :class:`DeploymentError` when the server's port is taken (``where``: the file that sets it)."""
    if port_in_use(host, port):
        raise DeploymentError(f"port {port} on {host} is already in use (another FLARE server, or one stopped "
                              "less than a minute ago whose socket is in TIME_WAIT); stop it or change "
                              f"fed_learn_port in {where}")


def _live_pid(pid_file: Path) -> int | None:
    """The process id ``pid_file`` names if that process is alive, else None."""
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def wait_for_poc_stop(poc_workspace: str | Path, timeout: float = 60.0) -> list[Path]:
    """Wait until every participant of a stopped POC federation has ended; return those still running at
    ``timeout`` (their folders), empty when all ended.

    FLARE's ``PocEnv.stop`` returns once the server is down, but each participant's kit loop
    (``startup/sub_start.sh``) notices the shutdown only at its next 5-second check and then waits 5 s more; until
    it ends, a new ``nvflare poc start`` on the same workspace refuses that participant ("one instance running")."""
    pid_files = sorted(Path(poc_workspace).glob("*/prod_*/*/*pid.fl"))
    deadline = time.monotonic() + timeout
    while True:
        running = sorted({p.parent for p in pid_files if _live_pid(p) is not None})
        if not running or time.monotonic() > deadline:
            return running
        time.sleep(0.5)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _raise_terminated(signum, frame) -> None:
    raise SystemExit(128 + signum)


class Federation:
    """Server and clients of ``kits`` running on this machine, with an admin session (a context manager).

    Args:
        kits: the startup kits (their server name must resolve to this machine, e.g. ``localhost``).
        env: extra environment for the site processes (e.g. ``{"DATA_ROOT": "/data/site-1"}``).
        clients: the clients to start (default: all of the kits').
        connect_timeout: seconds to wait for the server's port and for every client to register.
    """

    def __init__(self, kits: Kits, env: Mapping[str, str] | None = None, clients: Sequence[str] | None = None,
                 connect_timeout: float = 120.0) -> None:
        self.kits = kits
        self.clients = tuple(clients or kits.clients)
        self.connect_timeout = connect_timeout
        bin_dir = str(Path(sys.executable).parent)  # the kits' scripts run `python3`: this environment's
        self.env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), **(env or {})}
        self.processes: dict[str, subprocess.Popen] = {}
        self.session = None
        self._old_sigterm = None

    # -- processes ---------------------------------------------------------------------------------------------
    def log(self, participant: str) -> Path:
        return self.kits.prod_dir / participant / "deploy_console.log"

    def start_participant(self, name: str) -> None:
        folder = self.kits.prod_dir / name
        if not (folder / "startup/sub_start.sh").is_file():
            raise DeploymentError(f"{folder}: no startup kit (startup/sub_start.sh missing)")
        with open(self.log(name), "ab") as log:
            self.processes[name] = subprocess.Popen(["bash", "startup/sub_start.sh", "--once"], cwd=folder,
                                                    stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                                    start_new_session=True)
        logger.info("started %s (pid %d), log %s", name, self.processes[name].pid, self.log(name))

    def stop_participant(self, name: str, grace: float = 10.0, crash: bool = False) -> None:
        """Stop one participant's whole process group: TERM, then KILL after ``grace`` seconds (``crash``: KILL at
        once, as a power cut would)."""
        process = self.processes.get(name)
        if process is None:
            return
        steps = ((signal.SIGTERM, grace),) if not crash else ()
        for sig, wait in steps + ((signal.SIGKILL, 5.0),):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            # The FLARE process exited; its job processes may linger in the group a moment longer.
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                break
        logger.info("stopped %s", name)

    def _check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise DeploymentError(f"{name} exited with status {process.returncode} during start-up; end of its "
                                      f"log {self.log(name)}:", _tail(self.log(name)))

    # -- start / stop ------------------------------------------------------------------------------------------
    def __enter__(self) -> "Federation":
        # A SIGTERM (e.g. `timeout`, a CI runner) would end Python without running __exit__: make it an exception.
        if threading.current_thread() is threading.main_thread():
            self._old_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            self.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            if self._old_sigterm is not None:
                signal.signal(signal.SIGTERM, self._old_sigterm)
                self._old_sigterm = None

    def start(self) -> None:
        check_port_free(self.kits.host, self.kits.port)
        deadline = time.monotonic() + self.connect_timeout
        self._start_server(deadline)
        for client in self.clients:
            self.start_participant(client)
        self.session = self._connect(deadline)
        self.wait_for_clients(self.clients, deadline)

    def _start_server(self, deadline: float) -> None:
        host, port = self.kits.host, self.kits.port
        self.start_participant(self.kits.server)
        while not port_in_use(host, port):
            self._check_alive()
            if time.monotonic() > deadline:
                raise DeploymentError(f"the server did not open {host}:{port} within {self.connect_timeout:.0f} s; "
                                      f"end of {self.log(self.kits.server)}:", _tail(self.log(self.kits.server)))
            time.sleep(0.5)

    def restart_server(self, crash: bool = True) -> None:
        """Stop the server (killed at once with ``crash``) and start it again from its kit; return when the sites,
        which keep running, have registered with it again. nvflare 2.9 does not restore the jobs that were running
        (their records stay ``RUNNING``); :mod:`medflare.workflow` goes on from their run folders."""
        self._close_session(shutdown=False)
        self.stop_participant(self.kits.server, crash=crash)
        deadline = time.monotonic() + self.connect_timeout
        while port_in_use(self.kits.host, self.kits.port):  # the killed server's listener goes with its process
            if time.monotonic() > deadline:
                raise DeploymentError(f"port {self.kits.port} still in use after stopping the server")
            time.sleep(0.5)
        self._start_server(deadline)
        self.session = self._connect(deadline)
        self.wait_for_clients(self.clients, deadline)

    def _connect(self, deadline: float):
        from nvflare.fuel.flare_api.flare_api import new_secure_session

        admin_dir = self.kits.prod_dir / self.kits.admin
        return new_secure_session(self.kits.admin, str(admin_dir), timeout=max(deadline - time.monotonic(), 5.0))

    def connected_clients(self) -> list[str]:
        return sorted(c.name for c in self.session.get_system_info().client_info)

    def wait_for_clients(self, clients: Sequence[str], deadline: float) -> None:
        while True:
            connected = self.connected_clients()
            if set(clients) <= set(connected):
                logger.info("all clients connected: %s", ", ".join(connected))
                return
            self._check_alive()
            if time.monotonic() > deadline:
                raise DeploymentError(f"clients {sorted(set(clients) - set(connected))} did not connect within "
                                      f"{self.connect_timeout:.0f} s (connected: {connected})")
            time.sleep(1.0)

    def _close_session(self, shutdown: bool) -> None:
        """Close the admin session, first asking the server to shut the whole system down if ``shutdown``."""
        if self.session is None:
            return
        if shutdown:
            try:
                self.session.shutdown_system()
            except Exception as err:  # the system may be half up; the process groups are stopped anyway
                logger.info("graceful shutdown did not go through (%s)", err)
        try:
            self.session.close()
        except Exception:
            pass
        self.session = None

    def stop(self) -> None:
        """Ask the server to shut the system down, then stop every process group that is still there."""
        # Without an admin session nothing was asked to shut down: stop the process groups at once.
        deadline = time.monotonic() + (20 if self.session is not None else 0)
        self._close_session(shutdown=True)
        for name, process in self.processes.items():
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pass
        for name in list(self.processes):
            self.stop_participant(name)
        self.processes.clear()

    # -- jobs --------------------------------------------------------------------------------------------------
    def restore_run_folder(self, job_id: str) -> Path:
        """Put an ended job's archived run folder back into the server's workspace (from the job store, through
        the admin API), so that a job can resume from it (:mod:`medflare.workflow`); returns the folder."""
        target = self.kits.prod_dir / self.kits.server / job_id
        if target.exists():
            raise DeploymentError(f"{target} exists already: the run folder is in place")
        archive = Path(self.session.download_job_result(job_id)) / "workspace"
        if not archive.is_dir():
            raise DeploymentError(f"job {job_id}: its downloaded result has no workspace/ ({archive.parent})")
        with atomic_directory(target) as staged:
            shutil.copytree(archive, staged, dirs_exist_ok=True)
        return target

    def run_job(self, job_dir: str | Path, timeout: float = 1800.0) -> Path:
        """Submit ``job_dir``, wait for it to end, check its final status and download its results (path)."""
        job_dir = Path(job_dir)
        if not (job_dir / "meta.json").is_file():
            raise DeploymentError(f"{job_dir}: not a job folder (no meta.json)")
        job_id = self.session.submit_job(str(job_dir.resolve()))
        logger.info("submitted %s as job %s", job_dir, job_id)
        start = time.monotonic()
        status = self.wait_for_job(job_id, timeout)
        path = Path(self.session.download_job_result(job_id))
        logger.info("job %s %s in %.0f s; results in %s", job_id, status, time.monotonic() - start, path)
        return path

    def wait_for_job(self, job_id: str, timeout: float = 1800.0) -> str:
        """Follow job ``job_id`` until it ends; its final status, or a :class:`DeploymentError` unless that is
        ``FINISHED:COMPLETED`` (a job still running at ``timeout`` is aborted)."""
        start = time.monotonic()

        def progress(session, job_id, job_meta, *args) -> bool:
            logger.info("job %s: %s (%.0f s)", job_id, job_meta.get("status"), time.monotonic() - start)
            return True

        outcome = self.session.monitor_job(job_id, timeout=timeout, poll_interval=5.0, cb=progress)
        status = self.session.get_job_meta(job_id).get("status")
        if status != COMPLETED:
            try:
                self.session.abort_job(job_id)
            except Exception:
                pass
            raise DeploymentError(f"job {job_id} ended as {status} (monitor: {outcome}); end of the server log "
                                  f"{self.log(self.kits.server)}:", _tail(self.log(self.kits.server)))
        return status
