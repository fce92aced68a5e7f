"""``metastasis``: command-line tools of the whole-slide metastasis detection package."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from medcore.command import command_parser, run_command

from .annotations import AnnotationError
from .slide import SlideError
from .synthetic import generate_dataset


def _make_data(args: argparse.Namespace) -> int:
    paths = generate_dataset(args.out, args.tumor, args.normal, args.width, args.height, seed=args.seed,
                             split=args.split, tile=args.tile, workers=args.workers, overwrite=args.overwrite)
    print(f"{len(paths)} slides under {args.out}/{args.split}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser, sub = command_parser(
        "metastasis", "Metastasis detection in whole-slide images (Camelyon16) on NVIDIA FLARE and MONAI."
    )

    make = sub.add_parser(
        "make-data", help="generate synthetic Camelyon16-format slides and ASAP XML annotations",
        description="Generate synthetic H&E lymph-node slides as pyramidal tiled JPEG TIFFs (0.243 um/px, "
                    "OpenSlide-readable) with ASAP XML lesion annotations, in the Camelyon16 release layout, "
                    "and verify each slide by reading it back with OpenSlide.",
    )
    make.add_argument("--out", required=True, help="data root to write (training/ or testing/ is created inside)")
    make.add_argument("--tumor", type=int, default=2, help="number of slides with metastases (default: 2)")
    make.add_argument("--normal", type=int, default=2, help="number of slides without metastases (default: 2)")
    make.add_argument("--width", type=int, default=8192, help="level-0 width in pixels (default: 8192)")
    make.add_argument("--height", type=int, default=6144, help="level-0 height in pixels (default: 6144)")
    make.add_argument("--split", choices=("training", "testing"), default="training",
                      help="release layout to write: training/{tumor,normal,lesion_annotations} or "
                           "testing/{images,lesion_annotations} plus testing/reference.csv (default: training)")
    make.add_argument("--tile", type=int, default=512, help="TIFF tile size in pixels, a multiple of 16 (default: 512)")
    make.add_argument("--workers", type=int, default=1, help="processes rendering tiles (default: 1)")
    make.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same slides (default: 0)")
    make.add_argument("--overwrite", action="store_true", help="regenerate slides that already exist")
    make.set_defaults(func=_make_data)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv, (SlideError, AnnotationError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
