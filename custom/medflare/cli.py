"""The sub-commands both command-line tools share, built from a task's :class:`~medflare.task.TaskSpec`:
``job`` and ``make-job`` (the common options; the task adds its own and builds its recipe), ``report``,
``deploy`` and ``export-bundle``."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Callable

from medcore.command import (add_bootstrap_options, existing_dir, existing_file, existing_path, named_checkpoint,
                             non_empty, number, output_dir, parse_setting)
from medcore.errors import UserError
from medcore.files import read_json

from .algorithms import PRIVACY_FILTERS, SERVER_OPTIMIZERS, FederatedAlgorithm
from .task import TaskSpec, is_job_id

__all__ = ["add_job_parsers", "add_evaluation_parser", "job_overrides", "add_report_parser", "add_deploy_parser",
           "add_bundle_parser"]

Handler = Callable[[argparse.Namespace], int]


def _job_id(text: str) -> str:
    """A FLARE job id as ``--resume-from`` takes it (argparse type)."""
    if not is_job_id(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a job id (the id FLARE gave the interrupted job)")
    return text


def _add_job_options(parser: argparse.ArgumentParser, task: TaskSpec) -> None:
    """The job's options both ``job`` and ``make-job`` take: rounds, data, recipe settings, the federated
    algorithm (:func:`job_overrides` reads them)."""
    settings = ", ".join(f.name for f in dataclasses.fields(task.settings))
    parser.add_argument("--rounds", type=number(int, minimum=1),
                        help=f"federated rounds (default: Clara's {task.rounds})")
    parser.add_argument("--data-root", type=non_empty,
                        help=f"data folder the sites read, e.g. an absolute path (default: ${task.data_variable}, "
                             "expanded on each site)")
    parser.add_argument("--set", type=parse_setting, action="append", metavar="KEY=VALUE",
                        help=f"any training setting ({settings}; see {task.settings.__module__}); values are JSON and "
                             "typed, e.g. --set lr=2e-4 --set amp=false; repeatable")
    parser.add_argument("--resume-from", metavar="JOB_ID", type=_job_id,
                        help="go on from interrupted job JOB_ID (e.g. cut off by a server restart) at the round "
                             "after its last completed one, with its global model, best model and the sites' local "
                             "state; run it on the same server and sites, with the same --rounds")
    parser.add_argument("--tracking", choices=("tensorboard", "mlflow"), default="tensorboard",
                        help="where the sites' metrics go: tensorboard (event files on the server, which the "
                             "report plots) or mlflow (also an MLflow run per site in mlflow.db, SQLite, in the "
                             "server's job folder; needs the tracking extra: pip install 'clara-open[tracking]'); "
                             "default: tensorboard")
    algo = parser.add_argument_group(
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


def add_job_parsers(sub: argparse._SubParsersAction, task: TaskSpec, build: Callable[[argparse.Namespace], Any],
                    task_options: Callable[[argparse.ArgumentParser], None]) -> None:
    """``job`` (run the task's job in the simulator, a POC or a provisioned federation, or export it; what
    ``jobs/<task>/job.py`` calls) and ``make-job`` (export it to ``--out``).

    Args:
        build: the task's :class:`~medflare.recipe.TaskRecipe` from the parsed options.
        task_options: adds the task's own job options (its data layout) to a parser.
    """
    job = sub.add_parser(
        "job", help=f"run the {task.name} job (FLARE simulator, POC or provisioned federation) or export it",
        description=f"Build the {task.name} job (Clara's recipe unless told otherwise) with FLARE's job API and "
                    "run it: in FLARE's simulator (--env sim, the default; then print the cross-site report), in a "
                    "POC federation on this machine (--env poc: nvflare poc prepare and start, submit, wait, "
                    "download) or in a provisioned federation (--env prod: submit with the admin's startup kit). "
                    "With --export, write the job folder instead (submit it with `nvflare job submit -j FOLDER`, or "
                    f"run it with `nvflare simulator FOLDER -n {task.clients}`).")
    _add_run_options(job)
    _add_job_options(job, task)
    task_options(job)
    job.set_defaults(func=lambda args: _job(args, task, build))

    make = sub.add_parser("make-job", help=f"write the {task.name} job folder with other rounds, settings or data "
                                           "location (as job --export)",
                          description=f"Write the {task.name} job (Clara's recipe unless told otherwise) as a job "
                                      "folder OUT, the project's code included, as `job --export` does. Run it with "
                                      f"`nvflare simulator OUT -n {task.clients} -t {task.clients}`, or submit it "
                                      "to a POC or provisioned federation.")
    make.add_argument("--out", required=True, type=output_dir,
                      help="job folder to write; an existing one is replaced only if it is empty, an earlier "
                           "export or make-job output of this job; any other folder is refused")
    _add_job_options(make, task)
    task_options(make)
    make.set_defaults(func=lambda args: _make_job(args, build))


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """Where a job runs (``--env``, ``--workspace``, ``--startup-kit``, ``--project``, ``--timeout``), or
    ``--export``; ``--report``."""
    # FLARE's recipes reserve --export and --export-dir (nvflare.recipe.spec); they mean the same here.
    parser.add_argument("--export", action="store_true",
                        help="write the job folder (the project's code included in app/custom) instead of running it")
    parser.add_argument("--export-dir", type=output_dir, default=Path("fl_job"), metavar="DIR",
                        help="with --export: the folder the job folder is written into, as DIR/<job name>; an existing "
                             "job folder there is replaced only if it is an earlier export or make-job output of this "
                             "job (default: fl_job, as FLARE's recipes)")
    parser.add_argument("--env", choices=("sim", "poc", "prod"), default="sim",
                        help="where to run it: sim (FLARE's simulator, one process per site on this machine), poc "
                             "(a POC federation, FLARE's PocEnv: it prepares and starts FLARE's POC workspace, "
                             "$NVFLARE_POC_WORKSPACE, replacing a running one), prod (a provisioned federation, "
                             "FLARE's ProdEnv); default: sim")
    parser.add_argument("--workspace", type=output_dir, default=Path("workspace"),
                        help="sim: the simulator's workspace root; the run folder is WORKSPACE/<job name>, replaced "
                             "if an earlier run wrote it (default: workspace)")
    parser.add_argument("--startup-kit", type=existing_dir,
                        help="prod: the admin's startup kit folder (from nvflare provision)")
    parser.add_argument("--project", type=existing_file,
                        help="poc: a project file for nvflare poc prepare, e.g. provisioning/*.yml (default: FLARE's "
                             "POC project with as many sites as the job)")
    parser.add_argument("--timeout", type=number(float, minimum=0), default=0.0,
                        help="poc, prod: seconds to wait for the job (default: 0, no limit)")
    parser.add_argument("--report", type=output_dir, metavar="DIR",
                        help="also write the cross-site report's files (report.txt/.md/.csv/.json, curves) to DIR")


def add_evaluation_parser(sub: argparse._SubParsersAction, task: TaskSpec,
                          build: Callable[[argparse.Namespace], Any],
                          task_options: Callable[[argparse.ArgumentParser], None]) -> None:
    """``fed-eval``: any checkpoints scored at every site, as a FLARE job (:class:`medflare.recipe.EvaluationRecipe`).

    Args:
        build: the task's evaluation recipe from the parsed options (``args.checkpoints``: name -> file).
        task_options: adds the task's own data options to the parser.
    """
    evaluation = sub.add_parser(
        "fed-eval", help="score checkpoints at every site (federated evaluation, the data stay at the sites)",
        description="Send each checkpoint (e.g. a centrally trained baseline, or another job's global model) to "
                    "every site as a FLARE job and have each site score it as cross-site validation scores a model; "
                    "the results land in cross_val_results.json in a training job's shape, each checkpoint as "
                    "SRV_<NAME>, and the report is printed (put them beside a training job's rows with `report "
                    "TRAINING_RESULTS --add EVALUATION_RESULTS`). Runs where `job` runs (--env), or --export.")
    evaluation.add_argument("checkpoints", nargs="+", type=named_checkpoint, metavar="NAME=CHECKPOINT",
                            help="a model's name in the results and its checkpoint file or exported MONAI bundle "
                                 "folder (its weights are shipped with the job)")
    _add_run_options(evaluation)
    evaluation.add_argument("--data-root", type=non_empty,
                            help=f"data folder the sites read (default: ${task.data_variable}, expanded on each "
                                 "site)")
    evaluation.add_argument("--set", type=parse_setting, action="append", metavar="KEY=VALUE",
                            help="a setting of the scoring, as in job's --set (e.g. the validation window, device)")
    task_options(evaluation)
    evaluation.set_defaults(func=lambda args: _job(_checkpoints_by_name(args), task, build))


def _checkpoints_by_name(args: argparse.Namespace) -> argparse.Namespace:
    """``args.checkpoints`` as name -> file, each name once."""
    names = [name for name, _ in args.checkpoints]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UserError(f"model name(s) {repeated} given more than once; each checkpoint needs a name of its own")
    args.checkpoints = dict(args.checkpoints)
    return args


def _make_job(args: argparse.Namespace, build: Callable[[argparse.Namespace], Any]) -> int:
    from .recipe import export_job

    recipe = build(args)
    out = export_job(recipe, args.out)
    print(f"job written to {out}; run it with: nvflare simulator {out} -n {recipe.sites} -t {recipe.sites}")
    return 0


def _job(args: argparse.Namespace, task: TaskSpec, build: Callable[[argparse.Namespace], Any]) -> int:
    from .recipe import export_job, run_recipe

    recipe = build(args)
    if args.export:
        out = export_job(recipe, args.export_dir / recipe.name)
        print(f"job exported to {out}; run it with: nvflare simulator {out} -n {recipe.sites} -t {recipe.sites}, "
              f"or submit it with: nvflare job submit -j {out}")
        return 0
    result, logs = run_recipe(recipe, args.env, workspace=args.workspace, startup_kit=args.startup_kit,
                              project=args.project, timeout=args.timeout)
    print(f"{recipe.name}: results in {result}")
    return _report_run(result, task, args.report, logs, recipe.name)


def _report_run(result: Path, task: TaskSpec, out: Path | None, logs: Path | None, job: str) -> int:
    """Report a run's cross-site results; a run whose results are absent, empty or incomplete fails, in one line
    naming each participant's error and log (:func:`medflare.outcome.check_finished`), after the report."""
    from .crosssite import ReportError, find_results, report_command
    from .outcome import check_finished

    try:
        results = find_results(result)
    except ReportError:
        results = None
    if results is None or not read_json(results, "cross-site results"):
        check_finished(None, [], logs, job)
    return report_command(result, task.report, out=out,
                          check=lambda report: check_finished(results, report.missing, logs, job))


def job_overrides(args: argparse.Namespace) -> tuple[dict, FederatedAlgorithm | None]:
    """The recipe settings (``--set``, ``--fedprox-mu``) and the federated algorithm of ``make-job``'s options."""
    train = dict(args.set or [])
    if args.fedprox_mu is not None:
        train["fedprox_mu"] = args.fedprox_mu
    algorithm = FederatedAlgorithm(server_opt=args.server_opt or "", server_lr=args.server_lr,
                                   server_momentum=args.server_momentum, privacy=args.privacy or "",
                                   privacy_args=dict(args.privacy_set or []))
    return train, algorithm if algorithm != FederatedAlgorithm() else None


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
                              plot=not args.no_plot, added=args.add or (), extra=extra(args),
                              resamples=args.resamples, seed=args.seed, compare=args.compare or ())

    rep = sub.add_parser("report", help="print the cross-site table from cross_val_results.json and plot training "
                                        "curves", description=description)
    rep.add_argument("path", help="cross_val_results.json, or a folder that contains exactly one")
    rep.add_argument("--add", action="append", type=existing_path, metavar="RESULTS",
                     help="the models of another cross_val_results.json of the same sites (or a folder holding "
                          "one), e.g. a fed-eval job's, as rows of their own; repeatable")
    rep.add_argument("--markdown", action="store_true", help="print a Markdown table instead of the text layout")
    rep.add_argument("--out", type=output_dir, help="folder for report.txt/.md/.csv/.json and training_curves.png "
                                                    "(from the TensorBoard events found under PATH)")
    rep.add_argument("--no-plot", action="store_true", help="do not plot the training curves")
    add_bootstrap_options(rep, f"each site's {task.report.count_name} for the 95%% intervals of every value (the "
                               "AVE's resampled within each site)")
    rep.add_argument("--compare", nargs=2, metavar=("A", "B"),
                     help="also give model A minus model B (names as in the results, e.g. SRV_best_FL_global_model.pt "
                          "site-1) on the same items: per site and AVE, the difference, its paired 95%% bootstrap "
                          "interval and p-value; written to comparison.json with --out")
    rep.set_defaults(func=run)
    return rep


def add_deploy_parser(sub: argparse._SubParsersAction, task: TaskSpec) -> None:
    """``deploy``: kits -> federation -> job -> report."""

    def run(args: argparse.Namespace) -> int:
        from .deploy import (DeploymentError, Federation, check_port_free, check_workspace, poc_kits,
                             project_server, provision_kits)

        # Everything that can be checked is checked before the kits are made (poc prepare replaces a folder).
        project = args.project
        if not (args.job / "meta.json").is_file():
            raise DeploymentError(f"{args.job}: not a job folder (no meta.json)")
        check_port_free(*project_server(project), where=str(project))
        check_workspace(args.workspace)
        kits = (poc_kits if args.kits == "poc" else provision_kits)(project, args.workspace)
        env = {task.data_variable: str(Path(args.data_root).resolve())} if args.data_root else {}
        with Federation(kits, env=env, connect_timeout=args.connect_timeout) as federation:
            result = federation.run_job(args.job, timeout=args.timeout)
        print(f"job results downloaded to {result}")
        return _report_run(result, task, args.out, args.workspace, args.job.name)

    deploy = sub.add_parser(
        "deploy", help="run a job in a real local federation (POC or provisioned TLS kits) and report it",
        description="Make startup kits (nvflare poc prepare, or nvflare provision: mutual TLS either way) from a "
                    "project file whose server is localhost, start the server and every client as separate "
                    "processes, wait until all are connected, submit JOB through the FLARE API, follow it, check "
                    "that it ended FINISHED:COMPLETED, download its results, stop everything (also when a step "
                    "fails) and print the cross-site report.",
    )
    deploy.add_argument("job", type=existing_dir,
                        help="job folder to run (e.g. one written by job --export or make-job)")
    deploy.add_argument("--kits", choices=("poc", "provision"), default="poc",
                        help="poc: nvflare poc prepare; provision: nvflare provision (default: poc)")
    deploy.add_argument("--project", type=existing_file, required=True,
                        help="project file whose server is localhost, e.g. provisioning/*.yml of the repository")
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


def add_bundle_parser(sub: argparse._SubParsersAction, export: Callable[[Path, Path], Path], measured: str,
                      run_options: str) -> None:
    """``export-bundle``: a checkpoint as a MONAI bundle (``export(checkpoint, out)``, the task's
    ``export_bundle``); ``measured``: what its ``eval_metrics`` hold; ``run_options``: the bundle's run options
    printed after the export."""

    def run(args: argparse.Namespace) -> int:
        out = export(args.checkpoint, args.out)
        print(f"MONAI bundle written to {out}; run it with: python -m monai.bundle run --config_file "
              f"{out / 'configs/inference.json'} --bundle_root {out} {run_options}")
        return 0

    bundle = sub.add_parser(
        "export-bundle", help="write a checkpoint as a MONAI bundle that runs without this project",
        description="Write a MONAI bundle of a checkpoint (a FLARE global or best global model, a site's "
                    "local_best_model.pt, a central or standalone best_model.pt): configs/metadata.json (with the "
                    "model's provenance and, when the checkpoint lies in a FLARE run with cross-site results, its "
                    f"measured {measured}), configs/inference.json for `python -m monai.bundle run`, "
                    "models/model.pt and model.ts (TorchScript), scripts/, docs/README.md and LICENSE.",
    )
    bundle.add_argument("--checkpoint", required=True, type=existing_file, help="the model file to export")
    bundle.add_argument("--out", required=True, type=output_dir,
                        help="bundle folder to write (created if missing; a file of a bundle's names in it is replaced "
                             "only if export-bundle wrote it)")
    bundle.set_defaults(func=run)
