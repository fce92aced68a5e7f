"""``metastasis``: command-line tools of the whole-slide metastasis detection package.

The data preparation and training path, each step a file a user can open::

    metastasis make-data   # (demo) synthetic Camelyon16- or CAMELYON17-format slides + ASAP XML (+ pN stages)
    metastasis tissue      # slides -> tissue masks (PNG + JSON geometry + overlay PNG)
    metastasis patches     # slides + XML + tissue masks (or NCRF coordinate files) -> patch list JSON
    metastasis train       # patch list -> best_model.pt, metrics.csv, TensorBoard (standalone, no FLARE)
    metastasis make-job    # the FLARE job with other settings (nvflare simulator JOB -n 1)
    metastasis report      # the job's cross-site validation table (final / best global, local best)
    metastasis infer       # slides + checkpoint -> probability maps (.npy + geometry .json + heatmap .png)
    metastasis detect      # maps -> Camelyon16 detection CSVs (probability,x,y)
    metastasis lesions     # maps -> lesions (QuPath GeoJSON, ASAP XML, JSON), CAMELYON17 slide labels, pN stages
    metastasis evaluate    # CSVs + XML / mask ground truth -> FROC, sensitivities, slide AUC (JSON, CSV, PNG)
    metastasis compare     # two evaluations of the same slides -> FROC and AUC differences, intervals, p-values
    metastasis validate    # a checkpoint's patch accuracy / AUC on a patch list split
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Sequence

from demodata.centres import CENTRES
from medcore.command import (add_bootstrap_options, add_command, add_compute_options, add_generator_options,
                            add_processes_option, command_parser, existing_dir, existing_file, existing_path, non_empty,
                            number, output_dir, output_file, parse_setting, run_command)
from medcore.errors import UserError
from medcore.files import check_distinct_names, check_replaceable, claim_output_dir, input_files
from medcore.settings import MAX_PARALLEL
from medflare.cli import (add_bundle_parser, add_deploy_parser, add_evaluation_parser, add_job_parsers,
                          add_report_parser, job_overrides)

from .config import DEFAULT_TILE_OUTPUTS, DEFAULT_TILE_PIXELS, TrainConfig, default_tile_outputs
from .task import TASK

#: What ``lesions`` writes per map, as endings of the map's name: QuPath's GeoJSON, ASAP's XML, the lesions' JSON,
#: the pyramidal TIFF heatmap.
LESION_ENDINGS = ("_lesions.geojson", "_lesions.xml", "_lesions.json", "_heatmap.tif")

_SETTINGS_HELP = (f"training setting ({', '.join(f.name for f in dataclasses.fields(TrainConfig))}; see "
                  "metastasis.config.TrainConfig); values are JSON or else text, e.g. --set lr=5e-4 "
                  "--set augment=false --set stain_normalization=macenko; repeatable")


def _slides(paths: Sequence[str]) -> list[Path]:
    """Slide files from files and folders (folders: every .tif below them)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += input_files(p, "*.tif", recursive=True)
        elif p.exists():
            found.append(p)
        else:
            raise UserError(f"{p}: no such slide file or folder")
    if not found:
        raise UserError(f"no .tif slides found in {', '.join(paths)}")
    return found


def _make_data(args: argparse.Namespace) -> int:
    """Generate synthetic H&E lymph-node slides as pyramidal tiled JPEG TIFFs (0.243 um/px, OpenSlide-readable) with
    ASAP XML lesion annotations, in the Camelyon16 release layout, and verify each slide by reading it back with
    OpenSlide. With --split camelyon17: --patients patients of 5 lymph nodes each (camelyon17/patient_XXX_node_Y.tif,
    lesion_annotations/ for the nodes with lesions) and camelyon17/stage_labels.csv (CAMELYON17's patient,stage
    format): patient k is planned the pN stage k modulo 5 (pN0, pN0(i+), pN1mi, pN1, pN2), its nodes negative or
    holding ITCs, micro- or macro-metastases to match, and the CSV's labels and stages are measured from the written
    XML (each lesion's longest diameter). Nodes whose lesions need more tissue than --width x --height are made
    larger (a macro-metastasis needs about 100 megapixels)."""
    from demodata.camelyon import generate_camelyon17, generate_dataset

    options = {"seed": args.seed, "tile": args.tile, "workers": args.workers, "overwrite": args.overwrite,
               "centre": args.centre, "difficulty": args.difficulty}
    if args.split == "camelyon17":
        given = [flag for flag, value in (("--tumor", args.tumor), ("--normal", args.normal)) if value is not None]
        if given:
            raise UserError(f"{' and '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to --split "
                            "camelyon17 (each patient's nodes follow its pN stage); give --patients")
        paths = generate_camelyon17(args.out, 5 if args.patients is None else args.patients, args.width,
                                    args.height, **options)
    else:
        if args.patients is not None:
            raise UserError(f"--patients applies to --split camelyon17 only; give --tumor and --normal for "
                            f"--split {args.split}")
        paths = generate_dataset(args.out, 2 if args.tumor is None else args.tumor,
                                 2 if args.normal is None else args.normal, args.width, args.height,
                                 split=args.split, **options)
    print(f"{len(paths)} slides under {args.out}/{args.split}")
    return 0


def _tissue(args: argparse.Namespace) -> int:
    """For each slide: Otsu threshold on HSV saturation of a low-resolution view, specks removed and holes filled;
    writes NAME_tissue.png (0/255), NAME_tissue.json (downsample, level, level-0 size, threshold) and
    NAME_tissue_overlay.png (mask over the thumbnail). Finished slides are skipped, so an interrupted run can be
    restarted."""
    from .data.tissue import TissueMask, prepare_tissue_masks

    masks = prepare_tissue_masks(_slides(args.slides), args.out, overwrite=args.overwrite, **_tissue_options(args))
    for png in masks:
        mask = TissueMask.load(png)
        print(f"{png}: {100 * mask.tissue_fraction:.1f}% tissue, {mask.mask.shape[1]}x{mask.mask.shape[0]} "
              f"at 1/{mask.downsample:g}")
    return 0


def _label_file(text: str) -> tuple[str, int]:
    path, sep, label = text.rpartition("=")
    if not sep or label not in ("0", "1"):
        raise argparse.ArgumentTypeError(f"expected FILE=0 or FILE=1, got {text!r}")
    return existing_file(path), int(label)


def _patches(args: argparse.Namespace) -> int:
    """Generate the training/validation patch list (MONAI PatchWSIDataset convention: location = level-0 [y, x] of
    the patch centre) from a Camelyon16 training release: tumour patches centred inside tumour, normal patches from
    tissue away from tumour and from normal slides, balanced, split by slide, deterministic for a seed. Missing
    tissue masks are computed first. Or convert NCRF coordinate files (name,x,y per line) with
    --ncrf-train/--ncrf-valid."""
    from .data.patch_lists import check_patch_list, is_patch_list, read_ncrf_coords, write_patch_list
    from .data.sampling import find_training_slides, generate_patch_list

    check_replaceable(args.out, "patch list", is_patch_list)
    if args.ncrf_train or args.ncrf_valid:
        if not args.ncrf_train or not args.ncrf_valid:
            raise UserError("NCRF conversion needs both --ncrf-train and --ncrf-valid coordinate files")
        slide_dir = Path(args.slide_dir or args.data_root)
        patches = {"patch_size": args.patch_size,
                   "training": [e for f, label in args.ncrf_train for e in read_ncrf_coords(f, slide_dir, label)],
                   "validation": [e for f, label in args.ncrf_valid for e in read_ncrf_coords(f, slide_dir, label)]}
        check_patch_list(patches, "NCRF coordinates")
    else:
        sources = find_training_slides(args.data_root, args.masks or Path(args.data_root) / "tissue_masks",
                                       args.annotations, **_tissue_options(args))
        patches = generate_patch_list(sources, tumor_per_slide=args.tumor_per_slide, patch_size=args.patch_size,
                                      validation_fraction=args.validation_fraction, margin_um=args.margin_um,
                                      seed=args.seed)
    out = write_patch_list(args.out, patches, args.data_root)
    counts = {s: len(patches[s]) for s in ("training", "validation")}
    print(f"{out}: {counts['training']} training and {counts['validation']} validation patches")
    return 0


def _config(args: argparse.Namespace, base: dict | None = None):
    from .config import TrainConfig

    values = dict(base or {})
    values.update(dict(args.set or []))
    return TrainConfig.from_dict(values)


def _train(args: argparse.Namespace) -> int:
    """Train ResNet18 (1x1-convolution head) on a patch list with Clara's recipe (Novograd, BCEWithLogitsLoss, AMP,
    augmentation). Writes best_model.pt (best validation accuracy), last_model.pt, metrics.csv/json and TensorBoard
    events into --out; an interrupted run resumes from trainer_state.pt."""
    from medcore.distributed import data_parallel_training

    from .engine import train
    from .data.patch_lists import read_patch_list

    overrides = {"epochs": args.epochs} if args.epochs is not None else {}
    config = _config(args, overrides)
    patches = read_patch_list(args.patches, args.data_root, check=True)
    best = data_parallel_training(args.processes, config, train, patches, config, args.out, not args.restart)
    print(f"best model: epoch {best.get('epoch')} with validation accuracy {best.get('val_accuracy', float('nan')):.4f}"
          f" (AUC {best.get('val_auc', float('nan')):.4f}) -> {Path(args.out) / 'best_model.pt'}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    """Score a trained checkpoint (best_model.pt, a FLARE model) on one split of a patch list: accuracy at the
    recipe's threshold, ROC AUC, sensitivity, specificity."""
    from .engine import validate_checkpoint

    scores = validate_checkpoint(args.checkpoint, args.patches, args.data_root, args.split, args.csv,
                                 num_workers=args.num_workers, num_threads=args.num_threads, device=args.device)
    print(f"{args.checkpoint} on {args.split} ({scores['n']} patches): accuracy {scores['accuracy']:.4f}, "
          f"AUC {scores['auc']:.4f}, sensitivity {scores['sensitivity']:.4f}, specificity {scores['specificity']:.4f}")
    return 0


def _export_bundle(checkpoint: Path, out: Path) -> Path:
    from .bundle import export_bundle

    return export_bundle(checkpoint, out)


def _infer(args: argparse.Namespace) -> int:
    """Run a trained checkpoint over every slide's tissue: fully convolutional tiles (tiled, default) or window by
    window (patch, the reference). Per slide: NAME.npy (float32 map), NAME.json (geometry: map pixel (i, j) is the
    window centred at level-0 (stride/2 + j stride, stride/2 + i stride)), NAME_heatmap.png. Finished slides are
    skipped, so a folder can be resumed."""
    import torch

    from medcore.device import select_device
    from medcore.distributed import resolve_processes

    from .inference.run import infer_slides
    from .model import load_checkpoint

    if args.mode == "tiled" and args.stride % 32:
        raise UserError(f"--stride {args.stride}: the tiled mode needs a multiple of 32 (use --mode patch for "
                        "other strides)")
    slides = _slides(args.slides)
    device = select_device(args.device)
    processes = resolve_processes(args.processes, args.device)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    model, meta = load_checkpoint(args.checkpoint, device)
    maps = infer_slides(slides, model, args.out, stride=args.stride, mask_dir=args.masks,
                        mode=args.mode, device=device, amp=not args.no_amp, tile_outputs=args.tile_outputs,
                        batch_size=args.batch_size, overwrite=args.overwrite, checkpoint=str(args.checkpoint),
                        stain_normalization=meta["train_conf"]["stain_normalization"], processes=processes,
                        threads=args.num_threads)
    print(f"{len(maps)} probability maps in {args.out}")
    return 0


def _detect(args: argparse.Namespace) -> int:
    """Local maxima of each map at or above --threshold, with non-maximum suppression over --radius-um microns;
    writes OUT/NAME.csv with rows probability,x,y in level-0 pixels."""
    from .evaluation.detection import find_detections, write_detections
    from .inference.maps import describe_map, load_map
    from .data.slide import Slide

    def pixel_size(npy: Path, meta: dict) -> float:
        """--mpp, else the map's record of its slide's, else (a map of an earlier version) the slide's own."""
        if args.mpp is not None or meta.get("mpp") is not None:
            return args.mpp if args.mpp is not None else meta["mpp"]
        try:
            with Slide(meta["slide"]) as slide:
                return slide.mpp
        except UserError as err:
            raise UserError(f"{npy.with_suffix('.json')}: the map does not record its slide's pixel size and the "
                            f"slide cannot be read ({err}); pass --mpp") from None

    maps = input_files(args.maps, "*.npy") if args.maps.is_dir() else [args.maps]
    if not maps:
        raise UserError(f"{args.maps}: no .npy probability maps")
    check_distinct_names(maps, "maps", "detection files")
    # every map is checked (its JSON and header) before any work; each is decoded once, in turn, and the output
    # folder is claimed once the first map has passed its value checks (a bad map leaves nothing behind)
    described = {npy: describe_map(npy) for npy in maps}
    mpps = {npy: pixel_size(npy, meta) for npy, meta in described.items()}
    for index, npy in enumerate(maps):
        probs, meta = load_map(npy, described[npy])
        found = find_detections(probs, meta["stride"], tuple(meta["origin"]), mpps[npy], args.threshold,
                                args.radius_um)
        if index == 0:
            claim_output_dir(args.out, "detections", [f"{npy.stem}.csv" for npy in maps])
        out = write_detections(Path(args.out) / f"{npy.stem}.csv", found)
        print(f"{out}: {len(found)} detections")
    return 0


def _lesion_patients(maps: Sequence[Path], patients_csv: Path | None) -> dict[str, str]:
    """Each map's slide (its name) -> its patient: from ``patients_csv`` (a CSV ``slide,patient``) when it names
    the slide, else from the CAMELYON17 slide name; a slide that is neither is an error naming it."""
    from .evaluation.staging import patient_of, read_patient_map

    given = read_patient_map(patients_csv) if patients_csv is not None else {}
    patients = {}
    for npy in maps:
        if npy.stem in given:
            patients[npy.stem] = given[npy.stem]
            continue
        try:
            patients[npy.stem] = patient_of(npy.stem)
        except ValueError:
            where = f"not in {patients_csv}" if patients_csv is not None else "no --patients given"
            raise UserError(f"{npy}: slide {npy.stem!r} is not a CAMELYON17 slide name (patient_XXX_node_Y) and "
                            f"{where}; pass --patients with a CSV 'slide,patient' naming its patient") from None
    return patients


def _lesions(args: argparse.Namespace) -> int:
    """A lesion is an 8-connected region of a map at or above --threshold: its outline (along the map pixels' block
    edges, level-0 pixels), longest diameter, area, maximum and mean probability, and its CAMELYON17 category by
    longest diameter (ITC up to 200 um, micro-metastasis up to 2 mm, macro-metastasis above). Per map:
    OUT/NAME_lesions.geojson (QuPath), OUT/NAME_lesions.xml (ASAP), OUT/NAME_lesions.json (the lesions, the slide's
    label and score), OUT/NAME_heatmap.tif (the map as a pyramidal TIFF at the map's resolution, for viewers to
    overlay). Then OUT/stages.csv in CAMELYON17's format: each patient's pN stage and each slide's label; with
    --reference, the quadratic weighted kappa in OUT/staging.json."""
    from medcore.files import write_json

    from .evaluation.detection import read_detections
    from .evaluation.lesions import find_lesions, map_mpp, slide_result, write_lesions_json
    from .evaluation.overlays import write_heatmap_tiff, write_lesions_geojson, write_lesions_xml
    from .evaluation.staging import PN_STAGES, evaluate_staging, read_stage_csv, stage_patients, write_stage_csv
    from .inference.maps import describe_map, load_map

    maps = input_files(args.maps, "*.npy") if args.maps.is_dir() else [args.maps]
    if not maps:
        raise UserError(f"{args.maps}: no .npy probability maps")
    check_distinct_names(maps, "maps", "lesion files")
    # every input is checked before any work (the maps' JSON and headers, pixel sizes, patients, the reference);
    # the output folder is claimed once the first map has passed its value checks (a bad map leaves nothing)
    described = {npy: describe_map(npy) for npy in maps}
    mpps = {npy: map_mpp(meta, args.mpp, npy.with_suffix(".json")) for npy, meta in described.items()}
    patients = _lesion_patients(maps, args.patients)
    csvs = {npy: args.detections / f"{npy.stem}.csv" for npy in maps} if args.detections is not None else {}
    points = {npy: read_detections(csv) for npy, csv in csvs.items() if csv.is_file()}
    if args.reference is not None:
        ref_stages, ref_labels = read_stage_csv(args.reference)
        missing = sorted(set(ref_stages) - set(patients.values())) + sorted(set(ref_labels) - set(patients))
        if missing:
            raise UserError(f"{args.reference}: {len(missing)} of its patients and slides have no map in "
                            f"{args.maps}: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    out = Path(args.out)
    outputs = {"stages": out / "stages.csv", "staging": out / "staging.json"}
    names = [f"{npy.stem}{ending}" for npy in maps for ending in LESION_ENDINGS]
    names += ["stages.csv", "staging.json"]  # staging.json: written with --reference, else a stale one removed
    labels: dict[str, str] = {}
    for index, npy in enumerate(maps):
        probs, meta = load_map(npy, described[npy])
        lesions = find_lesions(probs, meta, args.threshold, mpps[npy], npy)
        if index == 0:
            claim_output_dir(out, "lesions", names)
        geojson, xml, record, heatmap = (out / f"{npy.stem}{ending}" for ending in LESION_ENDINGS)
        write_heatmap_tiff(heatmap, probs, meta["stride"], mpps[npy], meta["slide"])
        write_lesions_geojson(geojson, lesions, points.get(npy))
        write_lesions_xml(xml, lesions, comment=f"lesions of {npy.name} at threshold {args.threshold:g}")
        write_lesions_json(record, lesions, meta, args.threshold, mpps[npy], npy)
        labels[npy.stem], score = slide_result(lesions)
        largest = f"largest {lesions[0].longest_diameter_um:.0f} um" if lesions else "none"
        print(f"{npy.stem}: {labels[npy.stem]}, {len(lesions)} lesion{'' if len(lesions) == 1 else 's'} "
              f"({largest}), score {score:.3f}")
    stages = stage_patients(labels, patients)
    write_stage_csv(outputs["stages"], stages, labels, patients)
    counts = ", ".join(f"{stage} {n}" for stage in PN_STAGES if (n := list(stages.values()).count(stage)))
    print(f"{outputs['stages']}: {len(labels)} slides, {len(stages)} patients ({counts})")
    if args.reference is not None:
        result = evaluate_staging(args.reference, outputs["stages"])
        write_json(outputs["staging"], {"reference": str(Path(args.reference).resolve()),
                                        "prediction": str(outputs["stages"].resolve()), **result.to_dict()})
        print(f"{result.summary()} -> {outputs['staging']}")
    else:  # an earlier run's evaluation would no longer be of these stages (the folder is claimed: it is ours)
        outputs["staging"].unlink(missing_ok=True)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    """Score detections with the Camelyon16 FROC (evaluation regions: tumour grown by 75 um, holes filled,
    8-connected; ITCs under 275 um neither TP nor FP; normal slides count for false positives) and the slide-level
    ROC AUC. Writes froc.json, froc_slides.csv and froc.png."""
    from .evaluation.froc import evaluate_froc, write_froc
    from .evaluation.testset import collect_cases

    slides = _slides(args.slides)
    excluded = {name.lower(): name for name in args.exclude or []}
    unknown = sorted(set(excluded) - {s.stem.lower() for s in slides})
    if unknown:
        raise UserError(f"--exclude {excluded[unknown[0]]}: no such slide among the {len(slides)} given")
    cases = collect_cases([s for s in slides if s.stem.lower() not in excluded], args.detections, args.annotations,
                          args.masks, args.level, args.maps, args.reference)
    result = evaluate_froc(cases, args.level, reference_conventions=not args.no_reference_conventions,
                           resamples=args.resamples, seed=args.seed, excluded=sorted(excluded.values()))
    written = write_froc(result, args.out)
    rates = " ".join(f"{k}: {v:.4f}" for k, v in result.sensitivities.items())
    print(f"{result.summary()} (sensitivity at FP/slide {rates})")
    print(f"wrote {', '.join(str(p) for p in written.values())}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    """Evaluation A minus evaluation B of the same test slides and ground truth (two models' detections and maps,
    each scored by metastasis evaluate): the differences of the FROC score and of the slide AUC, each with its paired
    95% bootstrap interval over the slides (each resample scores both evaluations on the same slides, stratified as
    evaluate's intervals) and a two-sided bootstrap p-value. Slides are matched by name; a difference in slides,
    ground truth, labels or conventions is an error."""
    from medcore.files import write_json

    from .evaluation.froc import FROC_KIND, compare_froc, read_slide_scores

    (a, excluded_a), (b, excluded_b) = read_slide_scores(args.a), read_slide_scores(args.b)
    if sorted(excluded_a) != sorted(excluded_b):
        raise UserError(f"{args.a} left out {excluded_a or 'no slides'}, {args.b} {excluded_b or 'no slides'}: "
                        "compare evaluations of the same slides")
    comparison = compare_froc(a, b, resamples=args.resamples, seed=args.seed)
    left_out = f"; excluded: {', '.join(excluded_a)}" if excluded_a else ""
    print(f"A = {args.a}\nB = {args.b}\nA minus B, paired on the same {len(a.results)} slides (95% bootstrap "
          f"intervals, {args.resamples} resamples, seed {args.seed}; two-sided bootstrap p-values){left_out}:")
    print(f"  FROC score ({FROC_KIND}): {comparison['froc_score'].text()}")
    print(f"  slide AUC: {comparison['slide_auc'].text()}")
    if args.out:
        write_json(args.out, {"a": str(args.a), "b": str(args.b), "difference": "a - b", "froc_kind": FROC_KIND,
                              "slides": len(a.results), "excluded_slides": excluded_a,
                              **{key: value.to_dict() for key, value in comparison.items()}})
        print(f"wrote {args.out}")
    return 0


def _recipe(args: argparse.Namespace):
    """The metastasis job of ``job`` and ``make-job``'s options (:class:`~metastasis.job.MetastasisRecipe`)."""
    from .job import MetastasisRecipe

    train, algorithm = job_overrides(args)
    given = {"rounds": args.rounds, "data_root": args.data_root, "patch_list": args.patch_list,
             "resume_from": args.resume_from, "sites": args.sites}
    return MetastasisRecipe(train=train, algorithm=algorithm, tracking=args.tracking,
                       **{k: v for k, v in given.items() if v is not None})


def _evaluation(args: argparse.Namespace):
    """The federated evaluation of ``fed-eval``'s options (:class:`~metastasis.job.MetastasisEvaluation`)."""
    from .job import MetastasisEvaluation

    given = {"data_root": args.data_root, "patch_list": args.patch_list, "sites": args.sites}
    return MetastasisEvaluation(args.checkpoints, train=dict(args.set or []),
                                **{k: v for k, v in given.items() if v is not None})


def _job_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patch-list", type=non_empty,
                        help="the site's patch list (default: $CAMELYON_DATA_ROOT/patches.json); {site} in it, and "
                             "in --data-root, becomes each site's name (site-1, site-2, ...)")
    parser.add_argument("--sites", type=number(int, minimum=1),
                        help="number of sites, e.g. one per hospital (default: 1, Clara's single-client job)")


def _add_tissue_options(parser: argparse.ArgumentParser, description: str) -> None:
    """How tissue masks are found (:func:`~metastasis.data.tissue.tissue_mask`), as a group of options: the same
    options wherever a mask is computed."""
    group = parser.add_argument_group("tissue masks", description)
    group.add_argument("--downsample", type=number(float, minimum=1, maximum=1024), default=32.0,
                       help="level-0 pixels per mask pixel, 1-1024 (default: 32, level 5 of a Camelyon16 pyramid)")
    group.add_argument("--min-saturation", type=number(float, minimum=0, maximum=1), default=0.07,
                       help="lowest saturation threshold in [0, 1], whatever Otsu finds (default: 0.07)")
    group.add_argument("--min-tissue-um2", type=number(float, minimum=0), default=10_000.0,
                       help="tissue pieces smaller than this many square microns are dropped (default: 10000)")
    group.add_argument("--max-hole-um2", type=number(float, minimum=0), default=20_000.0,
                       help="holes smaller than this many square microns are filled (default: 20000)")


def _tissue_options(args: argparse.Namespace) -> dict[str, float]:
    """The values of :func:`_add_tissue_options`, as :func:`~metastasis.data.tissue.prepare_tissue_masks` takes
    them."""
    return {"downsample": args.downsample, "min_saturation": args.min_saturation,
            "min_tissue_um2": args.min_tissue_um2, "max_hole_um2": args.max_hole_um2}


def _add_data_parsers(sub: argparse._SubParsersAction) -> None:
    """make-data, tissue, patches: the data preparation path."""
    make = add_command(sub, "make-data", _make_data, memory_options="--tile and --workers",
                       help="generate synthetic Camelyon16- or CAMELYON17-format slides and ASAP XML annotations")
    make.add_argument("--out", required=True, type=output_dir,
                      help="data root to write (training/, testing/ or camelyon17/ is created inside)")
    make.add_argument("--tumor", type=number(int, minimum=0),
                      help="number of slides with metastases (default: 2; not with --split camelyon17)")
    make.add_argument("--normal", type=number(int, minimum=0),
                      help="number of slides without metastases (default: 2; not with --split camelyon17)")
    make.add_argument("--patients", type=number(int, minimum=1, maximum=1000),
                      help="--split camelyon17: number of patients, 5 lymph-node slides each, 1-1000 (default: 5, "
                           "one of each pN stage)")
    make.add_argument("--width", type=number(int, minimum=512, maximum=400_000), default=8192,
                      help="level-0 width in pixels, 512-400000 (default: 8192)")
    make.add_argument("--height", type=number(int, minimum=512, maximum=400_000), default=6144,
                      help="level-0 height in pixels, 512-400000 (default: 6144)")
    make.add_argument("--split", choices=("training", "testing", "camelyon17"), default="training",
                      help="release layout to write: training/{tumor,normal,lesion_annotations} or "
                           "testing/{images,lesion_annotations} plus testing/reference.csv (Camelyon16), or "
                           "camelyon17/ with lesion_annotations/ and stage_labels.csv (CAMELYON17's patients, nodes "
                           "and pN stages) (default: training)")
    make.add_argument("--tile", type=number(int, minimum=16, multiple_of=16), default=512,
                      help="TIFF tile size in pixels, a multiple of 16 (default: 512)")
    make.add_argument("--workers", type=number(int, minimum=1, maximum=MAX_PARALLEL), default=1,
                      help=f"processes rendering tiles, 1-{MAX_PARALLEL} (default: 1)")
    make.add_argument("--centre", choices=sorted(CENTRES),
                      help="render the slides as this centre's lab and scanner would (stain hue and strength, glass "
                           "colour, focus, noise, JPEG quality; see demodata/centres.py); default: the "
                           "generator's reference look")
    make.add_argument("--difficulty", type=number(float, minimum=0, maximum=1), default=0.0,
                      help="0-1: tumour cells closer to lymphocytes, plus benign mimics (germinal centres, "
                           "histiocyte clusters, sinuses) and artefacts (pen marks, folds, air bubbles, "
                           "out-of-focus areas), more the higher (default: 0, the easy demo data)")
    add_generator_options(make, "slides", "slides, annotations, reference.csv and stage_labels.csv")

    tissue = add_command(sub, "tissue", _tissue, memory_options="--downsample",
                         help="compute tissue masks of slides (Clara's prepare_inference_data)")
    tissue.add_argument("slides", nargs="+", help="slide files, or folders searched for .tif slides")
    tissue.add_argument("--out", required=True, type=output_dir, help="folder for the masks")
    _add_tissue_options(tissue, "Otsu's threshold on saturation, then specks dropped and holes filled")
    tissue.add_argument("--overwrite", action="store_true", help="recompute masks that already exist")

    patches = add_command(
        sub, "patches", _patches,
        help="make a patch list JSON from slides + annotations + tissue masks, or from NCRF coordinates")
    patches.add_argument("--data-root", required=True, type=existing_dir,
                         help="Camelyon16 root holding training/tumor, training/normal, training/lesion_annotations; "
                              "paths in the list are written relative to it")
    patches.add_argument("--out", required=True, type=output_file,
                         help="patch list JSON to write (an existing file is replaced only if it is a patch list)")
    patches.add_argument("--masks", type=output_dir,
                         help="tissue mask folder (default: DATA_ROOT/tissue_masks; computed if missing)")
    patches.add_argument("--annotations", type=existing_dir,
                         help="ASAP XML folder (default: DATA_ROOT/training/lesion_annotations)")
    patches.add_argument("--tumor-per-slide", type=number(int, minimum=1), default=200,
                         help="tumour patches per tumour slide; as many normal patches are drawn (default: 200)")
    patches.add_argument("--patch-size", type=number(int, minimum=32, multiple_of=32), default=224,
                         help="patch side in level-0 pixels, a multiple of 32 (default: 224)")
    patches.add_argument("--validation-fraction", type=number(float, minimum=0, below=1), default=0.2,
                         help="share of tumour slides and of normal slides held out for validation (default: 0.2)")
    patches.add_argument("--margin-um", type=number(float, minimum=0), default=50.0,
                         help="normal patches keep this distance (microns) plus half a patch from tumour (default: 50)")
    _add_tissue_options(patches, "for the slides that have no mask in --masks yet (as metastasis tissue computes "
                                 "them)")
    patches.add_argument("--seed", type=number(int, minimum=0), default=0, help="sampling seed (default: 0)")
    patches.add_argument("--ncrf-train", nargs="+", type=_label_file, metavar="FILE=LABEL",
                         help="NCRF coordinate files for training, each with its label, e.g. tumor_train.txt=1 "
                              "normal_train.txt=0")
    patches.add_argument("--ncrf-valid", nargs="+", type=_label_file, metavar="FILE=LABEL",
                         help="NCRF coordinate files for validation, e.g. tumor_valid.txt=1 normal_valid.txt=0")
    patches.add_argument("--slide-dir", type=existing_dir,
                         help="where NCRF slide names are looked up (default: DATA_ROOT)")


def _add_training_parsers(sub: argparse._SubParsersAction) -> None:
    """train, validate, make-job: the patch classifier, standalone or as the FLARE job."""
    train = add_command(sub, "train", _train, memory_options="--set batch_size, patch_size and num_workers",
                        help="train the patch classifier without FLARE")
    train.add_argument("--patches", required=True, type=existing_file, help="patch list JSON")
    train.add_argument("--data-root", type=existing_dir,
                       help="folder the list's slide paths are relative to (default: the list's folder)")
    train.add_argument("--out", required=True, type=output_dir, help="output folder")
    train.add_argument("--epochs", type=number(int, minimum=1), help="epochs, at least 1 (default: the recipe's 20)")
    train.add_argument("--restart", action="store_true", help="start from scratch even if --out holds a state")
    add_processes_option(train, "the training patches", data_parallel=True)
    train.add_argument("--set", type=parse_setting, action="append", metavar="KEY=VALUE", help=_SETTINGS_HELP)

    val = add_command(sub, "validate", _validate, memory_options="--num-workers",
                      help="patch accuracy and AUC of a checkpoint on a patch list")
    val.add_argument("--checkpoint", required=True, type=existing_path,
                     help="model file written by training (or a FLARE model), or a MONAI bundle folder "
                          "export-bundle wrote")
    val.add_argument("--patches", required=True, type=existing_file, help="patch list JSON")
    val.add_argument("--data-root", type=existing_dir,
                     help="folder the list's slide paths are relative to (default: the list's folder)")
    val.add_argument("--split", choices=("training", "validation"), default="validation",
                     help="which split to score (default: validation)")
    val.add_argument("--csv", type=output_file,
                     help="also write per-patch probabilities to this CSV (an existing file is replaced only if it "
                          "is such a CSV)")
    val.add_argument("--num-workers", type=number(int, minimum=0, maximum=MAX_PARALLEL), default=2,
                     help="DataLoader processes reading patches (default: 2)")
    add_compute_options(val, amp=False)

    add_job_parsers(sub, TASK, _recipe, _job_options)
    add_evaluation_parser(sub, TASK, _evaluation, _job_options)
    add_deploy_parser(sub, TASK)


def _add_slide_parsers(sub: argparse._SubParsersAction) -> None:
    """infer, detect, evaluate: whole slides to maps, detections and the FROC."""
    infer = add_command(sub, "infer", _infer, memory_options="--tile-outputs and --batch-size",
                        help="whole-slide tumour probability maps (1/stride of level 0), restricted to tissue")
    infer.add_argument("slides", nargs="+", help="slide files, or folders searched for .tif slides")
    infer.add_argument("--checkpoint", required=True, type=existing_path,
                       help="model file written by training (or a FLARE model), or a MONAI bundle folder "
                            "export-bundle wrote")
    infer.add_argument("--out", required=True, type=output_dir, help="folder for the maps")
    infer.add_argument("--masks", type=existing_dir, help="tissue mask folder (NAME_tissue.png from `metastasis "
                                                          "tissue`); missing masks are computed on the fly")
    infer.add_argument("--stride", type=number(int, minimum=1, maximum=4096), default=32,
                       help="level-0 pixels between windows, 1-4096; a multiple of 32 for the tiled mode (default: 32)")
    infer.add_argument("--mode", choices=("tiled", "patch"), default="tiled",
                       help="tiled: fully convolutional tiles sharing computation; patch: every window on its own "
                            "(default: tiled)")
    infer.add_argument("--tile-outputs", type=number(int, minimum=1),
                       help="tiled mode: map pixels per tile side at most (tile = patch + stride x (T - 1) pixels; "
                            f"memory grows with it; default: as many as fit {DEFAULT_TILE_PIXELS} pixels, "
                            f"{DEFAULT_TILE_OUTPUTS} at stride 32, {default_tile_outputs(64)} at stride 64)")
    infer.add_argument("--batch-size", type=number(int, minimum=1), default=32,
                       help="patch mode: windows per batch (default: 32)")
    infer.add_argument("--overwrite", action="store_true", help="recompute maps that already exist")
    add_compute_options(infer, shared="the slides")

    detect = add_command(sub, "detect", _detect, help="probability maps -> Camelyon16 detection CSVs (probability,x,y)")
    detect.add_argument("maps", type=existing_path, help="a folder of NAME.npy maps (with their NAME.json), or one map")
    detect.add_argument("--out", required=True, type=output_dir, help="folder for the CSVs")
    detect.add_argument("--threshold", type=number(float, minimum=0, maximum=1), default=0.5,
                        help="lowest probability kept, in [0, 1] (default: 0.5)")
    detect.add_argument("--radius-um", type=number(float, minimum=0), default=150.0,
                        help="suppress maxima this close (microns) to a higher one (default: 150)")
    detect.add_argument("--mpp", type=number(float, above=0),
                        help="level-0 microns per pixel (default: read from each slide)")

    lesions = add_command(sub, "lesions", _lesions,
                          help="probability maps -> lesions for QuPath and ASAP, CAMELYON17 slide labels and pN stages")
    lesions.add_argument("maps", type=existing_path,
                         help="a folder of NAME.npy maps (with their NAME.json), or one map")
    lesions.add_argument("--out", required=True, type=output_dir,
                         help="folder for the lesion files, stages.csv and staging.json")
    lesions.add_argument("--threshold", type=number(float, above=0, maximum=1), default=0.5,
                         help="map pixels at or above this probability are lesion, in (0, 1] (default: 0.5)")
    lesions.add_argument("--mpp", type=number(float, above=0),
                         help="level-0 microns per pixel, for every map (default: each map's record of its "
                              "slide's; needed for slides without it)")
    lesions.add_argument("--detections", type=existing_dir,
                         help="folder of Camelyon16 detection CSVs (`metastasis detect` output): each slide's points "
                              "go into its GeoJSON as Detection points with their probability (a slide without a "
                              "CSV has none)")
    lesions.add_argument("--patients", type=existing_file,
                         help="CSV with the header slide,patient giving each slide's patient (default: from "
                              "CAMELYON17 slide names, patient_XXX_node_Y)")
    lesions.add_argument("--reference", type=existing_file,
                         help="CAMELYON17 stage CSV (stage_labels.csv: patient,stage rows of patients and slides) "
                              "to score stages.csv against: kappa, accuracies, confusion matrices in staging.json")

    evaluate = add_command(sub, "evaluate", _evaluate,
                           help="Camelyon16 lesion FROC and slide-level AUC of detection CSVs")
    evaluate.add_argument("slides", nargs="+", help="the test slides (files or folders): every one counts")
    evaluate.add_argument("--detections", required=True, help="folder of NAME.csv detections (missing: none)")
    evaluate.add_argument("--annotations", type=existing_dir,
                          help="ASAP XML folder: NAME.xml ground truth, rasterised at --level")
    evaluate.add_argument("--masks", type=existing_dir,
                          help="ground-truth mask folder (NAME.npy / NAME.tif / NAME_mask.tif at --level, uint8 0/1 "
                               "or 0/255 indexed [y, x]); used where no XML exists")
    evaluate.add_argument("--level", type=number(int, minimum=0, maximum=16), default=5,
                          help="pyramid level of the ground truth, 0-16 (default: 5)")
    evaluate.add_argument("--maps", type=existing_dir, help="probability map folder: slide score = map maximum "
                                                            "(default: the highest detection probability)")
    evaluate.add_argument("--reference", type=existing_file,
                          help="reference.csv (name,Tumor|Normal) for the slide labels (default: whether the ground "
                               "truth has tumour)")
    evaluate.add_argument("--no-reference-conventions", action="store_true",
                          help="turn off the evaluation code's two corner-case conventions (zeros for missed "
                               "lesions with the lowest threshold dropped; float32 true-positive probabilities)")
    evaluate.add_argument("--exclude", action="append", metavar="NAME",
                          help="leave slide NAME out of the evaluation (repeatable; Camelyon16's Test_049 and "
                               "Test_114 are commonly left out); every output names the slides left out")
    add_bootstrap_options(evaluate, "the slides for the 95%% intervals of the FROC score and the slide AUC "
                                    "(stratified: slides with lesions / the others for the FROC, tumour / normal for "
                                    "the AUC)")
    evaluate.add_argument("--out", required=True, type=output_dir,
                          help="folder for froc.json, froc_slides.csv, froc.png")

    compare = add_command(sub, "compare", _compare, help="paired comparison of two FROC evaluations of the same slides")
    compare.add_argument("a", type=existing_path, help="evaluation A: metastasis evaluate's --out folder or froc.json")
    compare.add_argument("b", type=existing_path, help="evaluation B, of the same slides")
    add_bootstrap_options(compare, "the slides for the paired 95%% intervals", zero=False)
    compare.add_argument("--out", type=output_file, help="also write the comparison to this JSON file")


def build_parser() -> argparse.ArgumentParser:
    parser, sub = command_parser(
        "metastasis", "Metastasis detection in whole-slide images (Camelyon16) on NVIDIA FLARE and MONAI."
    )

    _add_data_parsers(sub)
    _add_training_parsers(sub)
    _add_slide_parsers(sub)

    add_bundle_parser(sub, _export_bundle, "validation patch accuracy and AUC",
                      "--dataset_dir SLIDES --output_dir MAPS [--stride 32] [--mode tiled|patch]")
    add_report_parser(sub, TASK, "Read FLARE's cross_site_val/cross_val_results.json (PATH is the file, a simulator "
                                 "workspace or a downloaded job folder) and print, per model (final global, best "
                                 "global, the site's local best), validation patch accuracy, AUC, sensitivity and "
                                 "specificity.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
