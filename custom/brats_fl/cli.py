"""``brats-fl``: command-line tools of the federated BraTS segmentation package."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from medcore.command import (add_command, add_compute_options, add_generator_options, add_processes_option,
                            command_parser, existing_dir, existing_file, existing_path, named_checkpoint, non_empty,
                            number, output_dir, output_file, parse_setting, run_command)
from medcore.errors import UserError
from medflare.cli import (add_bundle_parser, add_deploy_parser, add_evaluation_parser, add_job_parsers,
                          add_report_parser, job_overrides)

from .config import VAL_WINDOWS, TrainConfig
from .data import MODALITIES, RELEASE_SHAPE, CaseError, case_files, check_case, find_cases
from .datalist import CLARA_SITES, SPLITS, write_datalists
from .task import TASK

logger = logging.getLogger("brats_fl")


def _make_data(args: argparse.Namespace) -> int:
    """Generate synthetic multi-contrast MRI cases with gliomas in the BraTS 2018 training-release layout
    (ROOT/HGG/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz and the same under LGG/), and verify each case by reading
    it back with nibabel."""
    from demodata.brats import generate_dataset

    written = generate_dataset(args.out, args.hgg, args.lgg, shape=args.shape, seed=args.seed,
                               overwrite=args.overwrite)
    print(f"{sum(len(v) for v in written.values())} cases under {args.out} "
          f"(HGG {len(written['HGG'])}, LGG {len(written['LGG'])}), shape {tuple(args.shape)}")
    return 0


def _check_data(args: argparse.Namespace) -> int:
    """Check every case under ROOT/HGG and ROOT/LGG: four contrasts and a label present and readable, one shape and
    affine across them, labels in {0,1,2,4}, no NaN. Exits 1 if any case fails."""
    cases = find_cases(args.root)
    problems = 0
    for grade, dirs in cases.items():
        for case_dir in dirs:
            try:
                info = check_case(case_dir)
                logger.debug("%s/%s ok: shape %s labels %s", grade, info.name, info.shape, info.labels)
            except CaseError as err:
                problems += 1
                print(f"ERROR {err}", file=sys.stderr)
    total = sum(len(v) for v in cases.values())
    print(f"{args.root}: {total} cases (HGG {len(cases['HGG'])}, LGG {len(cases['LGG'])}), {problems} with problems")
    return 1 if problems else 0


def _datalist(args: argparse.Namespace) -> int:
    """Check every case, then split HGG cases to site-1 and LGG cases to site-2, each into
    training/validation/testing in Clara's proportions (210 HGG -> 144/30/36, 75 LGG -> 56/12/7), and write
    seg_brats18_datalist_client_a.json (site-1) and ..._client_b.json (site-2) in MONAI's datalist format with paths
    relative to ROOT."""
    paths = write_datalists(args.root, args.out, seed=args.seed, check=not args.no_check)
    for site, path in paths.items():
        print(f"{site}: {path}")
    return 0


def _recipe(args: argparse.Namespace):
    """The BraTS job of ``job`` and ``make-job``'s options (:class:`~brats_fl.job.BratsRecipe`)."""
    from .job import BratsRecipe

    train, algorithm = job_overrides(args)
    if args.crop:
        if "crop" in train and train["crop"] != list(args.crop):  # two answers: never pick one silently
            raise UserError(f"--crop {' '.join(map(str, args.crop))} and --set crop={json.dumps(train['crop'])} "
                            "disagree; give the crop once")
        train["crop"] = args.crop
    given = {"rounds": args.rounds, "data_root": args.data_root, "datalist_dir": args.datalist_dir,
             "resume_from": args.resume_from}
    return BratsRecipe(train=train, algorithm=algorithm, tracking=args.tracking,
                       **{k: v for k, v in given.items() if v is not None})


def _evaluation(args: argparse.Namespace):
    """The federated evaluation of ``fed-eval``'s options (:class:`~brats_fl.job.BratsEvaluation`)."""
    from .job import BratsEvaluation

    given = {"data_root": args.data_root, "datalist_dir": args.datalist_dir}
    return BratsEvaluation(args.checkpoints, train=dict(args.set or []),
                           **{k: v for k, v in given.items() if v is not None})


def _data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datalist-dir", type=non_empty,
                        help="folder of the site datalists (default: the data root's datalists folder)")


def _job_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--crop", type=number(int, above=0, multiple_of=8), nargs=3, metavar=("X", "Y", "Z"),
                        help="training crop and validation window in voxels, divisible by 8 (default: 224 224 144)")
    _data_options(parser)


def _train(args: argparse.Namespace) -> int:
    """Train Clara's SegResNet on the pooled training splits of the given site datalists (what a central server would
    do if the sites could share their data), with the same engine and recipe as a site: one epoch stands for one
    federated round. After each epoch the model is scored on the pooled validation splits (mean Dice over TC, WT,
    ET); OUT gets best_model.pt, last_model.pt, metrics.csv/.json, TensorBoard events and trainer_state.pt, from
    which an interrupted run resumes. Score the result with `validate`, or add it to the cross-site report with
    `report --extra central=OUT/best_model.pt`."""
    from medcore.distributed import data_parallel_training

    from .engine import pooled_splits, train

    settings = dict(args.set or [])
    if args.epochs:
        settings["epochs"] = args.epochs
    config = TrainConfig.from_dict(settings)  # a bad setting fails before any case is read
    splits = pooled_splits(args.datalist, args.data_root)
    logger.info("pooled %s", ", ".join(f"{len(v)} {k}" for k, v in splits.items()) + " cases")
    best = data_parallel_training(args.processes, config, train, splits, config, args.out, not args.restart)
    print(f"best model: epoch {best['epoch']} with validation mean Dice {best['val_dice']:.4f} -> "
          f"{Path(args.out) / 'best_model.pt'}")
    return 0


def _extra_models(args: argparse.Namespace):
    """The report's scorer of ``--extra`` checkpoints: each on every site's testing split."""
    if not args.extra:
        return None
    if not args.data_root:
        raise UserError("--extra: give --data-root, the folder the site datalists' paths are relative to")
    datalist_dir = Path(args.datalist_dir) if args.datalist_dir else Path(args.data_root) / "datalists"
    datalists = {site.name: datalist_dir / site.datalist for site in CLARA_SITES}

    def score(sites: Sequence[str]) -> dict:
        from medflare.crosssite import ITEMS, item_lists

        from .engine import summarize
        from .inference import score_checkpoint

        unknown = [s for s in sites if s not in datalists]
        if unknown:
            raise UserError(f"--extra: no datalist known for site(s) {unknown} (known: {sorted(datalists)})")

        def scored(checkpoint: Path, site: str) -> dict:
            per_case = score_checkpoint(checkpoint, datalists[site], args.data_root, "testing")
            return {**summarize(per_case), ITEMS: item_lists(per_case)}

        return {name: {site: scored(checkpoint, site) for site in sites} for name, checkpoint in args.extra}

    return score


def _weight(text: str) -> tuple[str, float]:
    site, sep, value = text.partition("=")
    try:
        weight = float(value)
    except ValueError:
        weight = float("nan")
    if not sep or not site or not weight > 0 or weight == float("inf"):
        raise argparse.ArgumentTypeError(f"expected SITE=POSITIVE_NUMBER, got {text!r}")
    return site, weight


def _inference_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(crop=tuple(args.roi), val_window=args.window, val_overlap=args.overlap, amp=not args.no_amp,
                       device=args.device, sw_batch_size=args.sw_batch_size)


def _validate(args: argparse.Namespace) -> int:
    """Run sliding-window inference of a checkpoint on one split of a site datalist and write per-case Dice (TC, WT,
    ET, mean) and Hausdorff 95 distances in mm to a CSV, with the means."""
    from medcore.distributed import resolve_processes

    from .inference import validate_checkpoint

    summary = validate_checkpoint(args.checkpoint, args.datalist, args.data_root, args.split, args.out,
                                  _inference_config(args), resolve_processes(args.processes, args.device))
    print(f"{args.checkpoint} on {args.split} ({summary['n_cases']} cases): "
          + " ".join(f"{k} {summary[k]:.4f}" for k in ("TC", "WT", "ET", "mean"))
          + " | HD95 mm " + " ".join(f"{k[5:]} {summary[k]:.2f}" for k in ("HD95_TC", "HD95_WT", "HD95_ET"))
          + f"\nper-case scores: {args.out}")
    return 0


def _infer(args: argparse.Namespace) -> int:
    """Segment one case into a NIfTI label map with BraTS labels (1 necrotic/non-enhancing core, 2 edema, 4
    enhancing tumour) in the input's exact shape, affine and orientation."""
    from .inference import segment_case

    given = [f"--{m}" for m in MODALITIES if getattr(args, m)]
    if args.case_dir and given:
        raise UserError(f"--case-dir and {', '.join(given)}: give either a case folder or the four files")
    if args.case_dir:
        files = {m: p for m, p in case_files(args.case_dir).items() if m != "seg"}
    else:
        files = {m: getattr(args, m) for m in MODALITIES if getattr(args, m)}
    out = segment_case(args.checkpoint, files, args.out, _inference_config(args))
    print(f"label map written to {out}")
    return 0


def _export_bundle(checkpoint: Path, out: Path) -> Path:
    from .bundle import export_bundle

    return export_bundle(checkpoint, out)


def _nifti_output(text: str) -> Path:
    path = output_file(text)
    if not path.name.endswith((".nii", ".nii.gz")):
        raise argparse.ArgumentTypeError(f"{text}: a label map is written as NIfTI; end the name in .nii.gz or .nii")
    return path


def _add_datalist_options(parser: argparse.ArgumentParser, pooled: bool = False) -> None:
    """``--datalist`` (``pooled``: several site datalists) and the ``--data-root`` their paths are relative to."""
    parser.add_argument("--datalist", required=True, type=existing_file, nargs="+" if pooled else None,
                        help="site datalist JSON files to pool (e.g. both seg_brats18_datalist_client_*.json)"
                        if pooled else "site datalist JSON")
    parser.add_argument("--data-root", required=True, type=existing_dir,
                        help="folder the datalist paths are relative to")


def _inference_parser(sub: argparse._SubParsersAction, name: str, run: Callable[[argparse.Namespace], int], help: str,
                      shared: str | None = None) -> argparse.ArgumentParser:
    """A sub-command that runs a checkpoint over cases: the checkpoint, the windows and where to compute."""
    parser = add_command(sub, name, run, help=help, memory_options="--roi and --sw-batch-size")
    defaults = TrainConfig()
    parser.add_argument("--checkpoint", required=True, type=existing_path,
                        help="model file (FL_global_model.pt, best_FL_global_model.pt, a site's local_best_model.pt) "
                             "or a MONAI bundle folder export-bundle wrote")
    parser.add_argument("--roi", type=number(int, above=0, multiple_of=8), nargs=3, default=list(defaults.crop),
                        metavar=("X", "Y", "Z"),
                        help="window size in voxels, each divisible by 8 (default: Clara's training crop "
                             f"{' '.join(map(str, defaults.crop))})")
    parser.add_argument("--window", choices=VAL_WINDOWS, default=defaults.val_window,
                        help="brain: one window centred on the brain (the nonzero voxels), sliding windows when "
                             "the brain does not fit in it; on a full-size case 1 pass instead of 8, Dice within "
                             "0.003 of the sliding windows. sliding: Clara's sliding windows over the whole "
                             f"volume (default: {defaults.val_window})")
    parser.add_argument("--overlap", type=number(float, minimum=0, below=1), default=defaults.val_overlap,
                        help=f"overlap of sliding windows in [0, 1) (default: {defaults.val_overlap})")
    parser.add_argument("--sw-batch-size", type=number(int, minimum=1, maximum=1024), default=1,
                        help="sliding windows per forward pass, 1-1024 (default: 1)")
    add_compute_options(parser, threads=False, shared=shared)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser, sub = command_parser(
        "brats-fl", "Federated brain-tumour segmentation (BraTS 2018) on NVIDIA FLARE and MONAI."
    )

    make = add_command(sub, "make-data", _make_data, memory_options="--shape",
                       help="generate synthetic BraTS-format cases (HGG/ and LGG/ NIfTI folders)")
    make.add_argument("--out", required=True, type=output_dir, help="BraTS root folder to write (created if missing)")
    make.add_argument("--hgg", type=number(int, minimum=0), default=8, help="number of high-grade cases (default: 8)")
    make.add_argument("--lgg", type=number(int, minimum=0), default=8, help="number of low-grade cases (default: 8)")
    make.add_argument("--shape", type=number(int, minimum=16, maximum=512), nargs=3, default=list(RELEASE_SHAPE),
                      metavar=("X", "Y", "Z"),
                      help="volume size in voxels, 16-512 each; the field of view stays 240x240x155 mm, so smaller "
                           "shapes have coarser voxels (default: the release's 240 240 155 at 1 mm)")
    add_generator_options(make, "cases")

    check = add_command(sub, "check-data", _check_data,
                        help="check every case of a BraTS root (files, geometry, labels)")
    check.add_argument("root", help="BraTS root folder (holding HGG/ and LGG/)")

    dl = add_command(sub, "datalist", _datalist,
                     help="split a BraTS root into the two sites' datalists (site-1 HGG, site-2 LGG)")
    dl.add_argument("root", help="BraTS root folder (holding HGG/ and LGG/)")
    dl.add_argument("--out", type=output_dir, help="folder for the datalist files (default: ROOT/datalists)")
    dl.add_argument("--seed", type=number(int, minimum=0), default=0,
                    help="seed of the case shuffle before splitting (default: 0)")
    dl.add_argument("--no-check", action="store_true", help="skip reading every case first (not recommended)")

    add_job_parsers(sub, TASK, _recipe, _job_options)
    add_evaluation_parser(sub, TASK, _evaluation, _data_options)
    add_deploy_parser(sub, TASK)
    rep = add_report_parser(
        sub, TASK, "Read FLARE's cross_site_val/cross_val_results.json (PATH is the file, a simulator workspace or "
                   "a downloaded job folder) and print, per model, each site's TC/WT/ET Dice and their average "
                   "across sites weighted by the number of test cases.",
        weights=lambda args: dict(args.weights) if args.weights else None, extra=_extra_models)
    rep.add_argument("--weights", type=_weight, nargs="+", metavar="SITE=W",
                     help="site weights for AVE instead of the test-case counts, e.g. Clara's site-1=30 site-2=12")
    rep.add_argument("--extra", type=named_checkpoint, nargs="+", metavar="NAME=CHECKPOINT",
                     help="further models (checkpoints or exported bundles) to score on every site's testing split "
                          "and add as rows, e.g. the centrally trained baseline: central=RUN/best_model.pt (needs "
                          "--data-root). It reads "
                          "every site's data in this process, so it needs all of it on this machine (the "
                          "simulator's case); at real sites score the model where the data are: fed-eval, then "
                          "--add its results")
    rep.add_argument("--data-root", type=existing_dir,
                     help="for --extra: the folder the site datalists' paths are relative to")
    rep.add_argument("--datalist-dir", type=existing_dir,
                     help="for --extra: folder of the site datalists (default: DATA_ROOT/datalists)")

    tr = add_command(sub, "train", _train, memory_options="--set crop, batch_size and cache_rate",
                     help="centralised training on the pooled data of several sites (the baseline of FL papers)")
    _add_datalist_options(tr, pooled=True)
    tr.add_argument("--out", required=True, type=output_dir,
                    help="run folder (created if missing; files of these names that train did not write are "
                         "never replaced)")
    tr.add_argument("--epochs", type=number(int, minimum=1), help="epochs to train (default: the recipe's 600)")
    tr.add_argument("--set", type=parse_setting, action="append", metavar="KEY=VALUE",
                    help="a training setting (those of make-job's --set, see brats_fl.config.TrainConfig), e.g. "
                         "--set crop=[64,64,48] --set lr=5e-4; repeatable")
    tr.add_argument("--restart", action="store_true", help="start afresh even if OUT holds a training state")
    add_processes_option(tr, "the training cases", data_parallel=True)

    val = _inference_parser(sub, "validate", _validate,
                            help="score a checkpoint on a datalist split: per-case Dice and HD95 to CSV",
                            shared="the cases")
    _add_datalist_options(val)
    val.add_argument("--split", choices=SPLITS, default="testing", help="which list to score (default: testing)")
    val.add_argument("--out", required=True, type=output_file,
                     help="CSV file to write (an existing file is replaced only if it is a CSV validate wrote)")

    inf = _inference_parser(sub, "infer", _infer,
                            help="segment one case: four NIfTI contrasts in, a BraTS label map out")
    inf.add_argument("--case-dir", type=existing_dir,
                     help="a case folder of the release layout (instead of the four files)")
    for m in MODALITIES:
        inf.add_argument(f"--{m}", type=existing_file, help=f"{m.upper()} NIfTI file (when --case-dir is not given)")
    inf.add_argument("--out", required=True, type=_nifti_output,
                     help="label map to write (.nii or .nii.gz; an existing file is replaced only if it is a label "
                          "map infer wrote)")

    add_bundle_parser(sub, _export_bundle, "Dice and HD95", "--dataset_dir CASES --output_dir OUT")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
