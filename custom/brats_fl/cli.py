"""``brats-fl``: command-line tools of the federated BraTS segmentation package."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from medcore.progress import configure_logging

from .data import CaseError, check_case, find_cases
from .synthetic import RELEASE_SHAPE, generate_dataset

logger = logging.getLogger("brats_fl")


def _make_data(args: argparse.Namespace) -> int:
    written = generate_dataset(args.out, args.hgg, args.lgg, shape=args.shape, seed=args.seed,
                               overwrite=args.overwrite)
    print(f"{sum(len(v) for v in written.values())} cases under {args.out} "
          f"(HGG {len(written['HGG'])}, LGG {len(written['LGG'])}), shape {tuple(args.shape)}")
    return 0


def _check_data(args: argparse.Namespace) -> int:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brats-fl",
        description="Federated brain-tumour segmentation (BraTS 2018) on NVIDIA FLARE and MONAI.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    make = sub.add_parser(
        "make-data", help="generate synthetic BraTS-format cases (HGG/ and LGG/ NIfTI folders)",
        description="Generate synthetic multi-contrast MRI cases with gliomas in the BraTS 2018 training-release "
                    "layout (ROOT/HGG/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz and the same under LGG/), "
                    "and verify each case by reading it back with nibabel.",
    )
    make.add_argument("--out", required=True, help="BraTS root folder to write (created if missing)")
    make.add_argument("--hgg", type=int, default=8, help="number of high-grade cases (default: 8)")
    make.add_argument("--lgg", type=int, default=8, help="number of low-grade cases (default: 8)")
    make.add_argument("--shape", type=int, nargs=3, default=list(RELEASE_SHAPE), metavar=("X", "Y", "Z"),
                      help="volume size in voxels; the field of view stays 240x240x155 mm, so smaller shapes have "
                           "coarser voxels (default: the release's 240 240 155 at 1 mm)")
    make.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same cases (default: 0)")
    make.add_argument("--overwrite", action="store_true",
                      help="regenerate cases that already exist (default: keep them)")
    make.set_defaults(func=_make_data)

    check = sub.add_parser(
        "check-data", help="check every case of a BraTS root (files, geometry, labels)",
        description="Check every case under ROOT/HGG and ROOT/LGG: four contrasts and a label present and readable, "
                    "one shape and affine across them, labels in {0,1,2,4}, no NaN. Exits 1 if any case fails.",
    )
    check.add_argument("root", help="BraTS root folder (holding HGG/ and LGG/)")
    check.set_defaults(func=_check_data)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        return args.func(args)
    except (CaseError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
