"""The sub-commands both command-line tools share, built from a task's :class:`~medflare.task.TaskSpec`:
``make-job`` (the common options; the task adds its own), ``ship-code``, ``report`` and ``deploy``."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Callable

from medcore.command import existing_dir, existing_file, non_empty, number, output_dir, parse_setting
from medcore.errors import UserError

from .algorithms import PRIVACY_FILTERS, SERVER_OPTIMIZERS, FederatedAlgorithm
from .task import TaskSpec

__all__ = ["add_make_job_parser", "job_overrides", "add_ship_code_parser", "add_report_parser", "add_deploy_parser"]

Handler = Callable[[argparse.Namespace], int]


def add_make_job_parser(sub: argparse._SubParsersAction, task: TaskSpec, description: str,
                        func: Handler) -> argparse.ArgumentParser:
    """``make-job``: ``--out``, ``--template``, ``--rounds``, ``--data-root``, ``--set``, ``--resume-from`` and the
    federated algorithm (FedProx, FedOpt, privacy filters; :func:`job_overrides` reads them); returns the parser for
    the task's own options."""
    settings = ", ".join(f.name for f in dataclasses.fields(task.recipe))
    job = sub.add_parser("make-job", help=f"write a copy of {task.job} with other rounds, settings or data location",
                         description=description)
    job.add_argument("--out", required=True, type=output_dir,
                     help="job folder to write; an existing one is replaced only if it is empty or a job make-job "
                          "wrote (it carries a .clara-open-output marker), any other folder is refused")
    job.add_argument("--template", type=existing_dir, help=f"job folder to start from (default: {task.job})")
    job.add_argument("--rounds", type=number(int, minimum=1), help="federated rounds (default: the template's)")
    job.add_argument("--data-root", type=non_empty,
                     help=f"data folder the sites read, e.g. an absolute path (default: ${task.data_variable}, "
                          "expanded on each site)")
    job.add_argument("--set", type=parse_setting, action="append", metavar="KEY=VALUE",
                     help=f"any training setting ({settings}; see {task.recipe.__module__}); values are JSON and "
                          "typed, e.g. --set lr=2e-4 --set amp=false; repeatable")
    job.add_argument("--resume-from", metavar="JOB_ID",
                     help="go on from interrupted job JOB_ID (e.g. cut off by a server restart) at the round "
                          "after its last completed one, with its global model, best model and the sites' local "
                          "state; submit the result to the same server and sites, with the same --rounds")
    algo = job.add_argument_group(
        "federated algorithm", "FedAvg unless told otherwise; the options combine (e.g. FedProx with SVT). FedOpt "
        "and the privacy filters make the sites send weight changes instead of weights (see medflare.algorithms)")
    algo.add_argument("--fedprox-mu", type=number(float, minimum=0), metavar="MU",
                      help="FedProx: add MU/2 * ||w - w_global||^2 to every site's local loss (the recipe's "
                           "fedprox_mu; default: 0, plain FedAvg)")
    algo.add_argument("--server-opt", choices=sorted(SERVER_OPTIMIZERS),
                      help="FedOpt: the server applies this optimiser to the averaged change of the sites, as a "
                           "pseudo-gradient: adam (FedAdam: lr 1e-3, betas 0.9/0.99, eps 1e-3) or avgm (FedAvgM: "
                           "SGD, lr 1.0, momentum 0.6); default: none, the plain average")
    algo.add_argument("--server-lr", type=number(float, above=0), help="the server optimiser's learning rate")
    algo.add_argument("--server-momentum", type=number(float, minimum=0, below=1),
                      help="avgm's momentum in [0, 1)")
    algo.add_argument("--privacy", choices=sorted(PRIVACY_FILTERS),
                      help="a privacy filter on every site's update before it leaves the site: svt (sparse vector "
                           "technique; defaults of NVFlare's BraTS example: fraction 0.9, epsilon 0.001, noise_var "
                           "1.0, gamma 1e-4) or percentile (share only changes above the 10th percentile, clipped "
                           "at gamma 0.01). It protects each update, it is not sample-level DP accounting")
    algo.add_argument("--privacy-set", type=parse_setting, action="append", metavar="KEY=VALUE",
                      help="a setting of the privacy filter, named as in nvflare's SVTPrivacy or PercentilePrivacy "
                           "(e.g. --privacy-set epsilon=0.01); repeatable")
    job.set_defaults(func=func)
    return job


def job_overrides(args: argparse.Namespace) -> tuple[dict, FederatedAlgorithm | None]:
    """The recipe settings (``--set``, ``--fedprox-mu``) and the federated algorithm of ``make-job``'s options."""
    train = dict(args.set or [])
    if args.fedprox_mu is not None:
        train["fedprox_mu"] = args.fedprox_mu
    algorithm = FederatedAlgorithm(server_opt=args.server_opt or "", server_lr=args.server_lr,
                                   server_momentum=args.server_momentum, privacy=args.privacy or "",
                                   privacy_args=dict(args.privacy_set or []))
    return train, algorithm if algorithm != FederatedAlgorithm() else None


def add_ship_code_parser(sub: argparse._SubParsersAction, task: TaskSpec) -> None:
    """``ship-code``: copy the task's packages into a job's ``app/custom``."""
    ship = sub.add_parser(
        "ship-code", help=f"copy the project's code into a job's app/custom (make does this for {task.job})",
        description=f"Copy the {' and '.join(task.packages)} packages into JOB/app/custom, replacing the copies this "
                    "command wrote before, so FLARE ships them to the sites with the job. Run it after changing "
                    "the code.",
    )
    ship.add_argument("job", help="job folder (holding app/config and app/custom)")
    ship.set_defaults(func=lambda args: _ship_code(args.job, task))


def _ship_code(job: str, task: TaskSpec) -> int:
    from .jobs import ship_code

    if not (Path(job) / "app" / "config").is_dir():
        raise UserError(f"{job}: not a job folder (no app/config inside)")
    out = ship_code(Path(job) / "app" / "custom", task.packages)
    print(f"project code copied into {out}")
    return 0


def add_report_parser(sub: argparse._SubParsersAction, task: TaskSpec, description: str,
                      weights: Callable[[argparse.Namespace], dict | None] = lambda args: None,
                      extra: Callable[[argparse.Namespace], Callable | None] = lambda args: None
                      ) -> argparse.ArgumentParser:
    """``report``: the cross-site table and training curves (``weights``: the task's site weights from its own
    options; ``extra``: the scorer of further models from its own options, see
    :func:`medflare.crosssite.report_command`); returns the parser for those options."""

    def run(args: argparse.Namespace) -> int:
        from .crosssite import report_command

        return report_command(args.path, task.report, weights=weights(args), markdown=args.markdown, out=args.out,
                              plot=not args.no_plot, extra=extra(args))

    rep = sub.add_parser("report", help="print the cross-site table from cross_val_results.json and plot training "
                                        "curves", description=description)
    rep.add_argument("path", help="cross_val_results.json, or a folder that contains exactly one")
    rep.add_argument("--markdown", action="store_true", help="print a Markdown table instead of the text layout")
    rep.add_argument("--out", type=output_dir, help="folder for report.txt/.md/.csv/.json and training_curves.png "
                                                    "(from the TensorBoard events found under PATH)")
    rep.add_argument("--no-plot", action="store_true", help="do not plot the training curves")
    rep.set_defaults(func=run)
    return rep


def add_deploy_parser(sub: argparse._SubParsersAction, task: TaskSpec) -> None:
    """``deploy``: kits -> federation -> job -> report."""

    def run(args: argparse.Namespace) -> int:
        from .crosssite import report_command
        from .deploy import (DeploymentError, Federation, check_port_free, check_workspace, poc_kits,
                             project_server, provision_kits)

        # Everything that can be checked is checked before the kits are made (poc prepare replaces a folder).
        project = args.project or task.project_file()
        if not (args.job / "meta.json").is_file():
            raise DeploymentError(f"{args.job}: not a job folder (no meta.json)")
        check_port_free(*project_server(project), where=str(project))
        check_workspace(args.workspace)
        kits = (poc_kits if args.kits == "poc" else provision_kits)(project, args.workspace)
        env = {task.data_variable: str(Path(args.data_root).resolve())} if args.data_root else {}
        with Federation(kits, env=env, connect_timeout=args.connect_timeout) as federation:
            result = federation.run_job(args.job, timeout=args.timeout)
        print(f"job results downloaded to {result}")
        return report_command(result, task.report, out=args.out)

    deploy = sub.add_parser(
        "deploy", help="run a job in a real local federation (POC or provisioned TLS kits) and report it",
        description="Make startup kits (nvflare poc prepare, or nvflare provision: mutual TLS either way) from a "
                    "project file whose server is localhost, start the server and every client as separate "
                    "processes, wait until all are connected, submit JOB through the FLARE API, follow it, check "
                    "that it ended FINISHED:COMPLETED, download its results, stop everything (also when a step "
                    "fails) and print the cross-site report.",
    )
    deploy.add_argument("job", type=existing_dir,
                        help=f"job folder to run (e.g. one written by make-job from {task.job})")
    deploy.add_argument("--kits", choices=("poc", "provision"), default="poc",
                        help="poc: nvflare poc prepare; provision: nvflare provision (default: poc)")
    deploy.add_argument("--project", type=existing_file, help=f"project file (default: {task.project})")
    deploy.add_argument("--workspace", required=True, type=output_dir,
                        help="folder for the startup kits and the sites' workspaces: new, empty, or one an earlier "
                             "deploy made (it is replaced); any other folder is refused")
    deploy.add_argument("--data-root", type=existing_dir,
                        help=f"exported to the sites as {task.data_variable} (for jobs that use it)")
    deploy.add_argument("--timeout", type=number(float, above=0), default=3600.0,
                        help="seconds the job may run (default: 3600)")
    deploy.add_argument("--connect-timeout", type=number(float, above=0), default=120.0,
                        help="seconds to wait for the server and every client to come up (default: 120)")
    deploy.add_argument("--out", type=output_dir, help="folder for the report files (report.txt/.md/.csv/.json)")
    deploy.set_defaults(func=run)
