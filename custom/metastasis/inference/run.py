"""Whole-slide inference: tumour probability maps at 1/stride of level 0, restricted to tissue.

Where map pixels lie and which are computed: :mod:`~metastasis.inference.geometry`; how maps are stored:
:mod:`~metastasis.inference.maps`. Windows reaching past the slide's edge see white glass; map pixels whose centre
is off tissue are 0. Two modes compute the same map:

* ``patch``: every tissue window read and classified on its own (the usual way; the reference);
* ``tiled``: the network is fully convolutional (average pool + 1x1 convolution head), so one large tile of
  ``patch_size + 32 (T - 1)`` pixels gives T x T outputs at once, neighbouring windows sharing their computation.
  Tiles overlap by ``patch_size - 32`` pixels, so the output grid is exact and seamless (``stride`` must be a
  multiple of 32; for ``stride = 32 k`` every k-th output is kept). :func:`~metastasis.inference.geometry.tile_plan`
  lays the tiles over the tissue, at most ``T`` x ``T`` outputs each. Values differ from the ``patch`` mode only
  through the convolutions' zero padding at a lone patch's border (benchmarks/results/slide_inference.md measures
  by how much).

With a recipe trained on stain-normalised patches (``stain_normalization = macenko``), every pixel read is
normalised with the slide's stain vectors (:mod:`metastasis.data.stain`), as its training patches were.

Both modes run the network with its batch norms folded into the convolutions (:func:`~metastasis.model.
fold_batchnorm`). A background thread reads (and OpenSlide decodes) the next tiles while the network runs on the
current one (:func:`medcore.threads.prefetch`); a bounded queue keeps memory flat whatever the slide size, and freed
memory goes back to the system before a tile larger than the last and after each slide (glibc would keep it, and a
folder run's memory would ratchet up from slide to slide). Each slide is opened once: its tissue mask, stain
estimate, map and heatmap share the open :class:`~metastasis.data.slide.Slide` and its thumbnail.

A folder of slides can be shared out over processes (``processes``; one per GPU, or CPU processes, started by
PyTorch's elastic launcher, :mod:`medcore.distributed`), or over the ranks ``torchrun`` started (also on several
nodes): each slide is done by one rank, with the same network, so the maps are those of one process.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import openslide
import torch

from medcore.device import amp_dtype, autocast
from medcore.distributed import current_rank, joined_group, rank_device, run_processes
from medcore.errors import UserError
from medcore.files import check_distinct_names, claim_output_dir
from medcore.memory import release_free_memory
from medcore.progress import Progress
from medcore.provenance import check_described, file_digest
from medcore.threads import prefetch
from medflare.bundle import BUNDLE_WEIGHTS

from ..config import STAIN_NORMALIZATIONS, default_tile_outputs
from ..data.slide import Slide, check_slide_file, opened, read_rgb
from ..data.stain import StainNormalizer, slide_stain_vectors
from ..data.tissue import TissueMask, compute_tissue_mask, mask_paths
from ..data.transforms import to_input
from ..model import OUTPUT_STRIDE, PatchClassifier, fold_batchnorm
from .geometry import MapGeometry, tile_plan, tissue_pixels
from .maps import MAP_ENDINGS, write_map

__all__ = ["MODES", "probability_map", "infer_slides"]

logger = logging.getLogger(__name__)

MODES = ("tiled", "patch")


@dataclasses.dataclass(frozen=True)
class _MapRun:
    """What both map modes work from: an open slide, the model and the map pixels to compute.

    Attributes:
        todo: boolean (rows, cols) map of the pixels whose window centre is on tissue.
        on_progress: called with (units done, units total) after each tile or batch.
    """

    slide: openslide.OpenSlide
    path: Path
    model: PatchClassifier
    geometry: MapGeometry
    todo: np.ndarray
    device: torch.device
    amp: bool
    on_progress: Callable[[int, int], None]
    normalizer: StainNormalizer | None = None  # the slide's stain normalisation (the recipe's), None: none
    #: where the time goes: seconds reading and normalising stains (in the reader thread), seconds in the network,
    #: pixels read
    costs: dict = dataclasses.field(default_factory=lambda: {"read_seconds": 0.0, "stain_seconds": 0.0,
                                                             "network_seconds": 0.0, "pixels_read": 0})

    def read(self, location: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
        """A level-0 region (white outside the slide), stain-normalised when the run says so, counted in
        :attr:`costs`."""
        start = time.perf_counter()
        rgb = read_rgb(self.slide, location, 0, size, self.path, pad_outside=True)
        read = time.perf_counter()
        self.costs["read_seconds"] += read - start
        self.costs["pixels_read"] += size[0] * size[1]
        if self.normalizer is not None:
            rgb = self.normalizer(rgb)
            self.costs["stain_seconds"] += time.perf_counter() - read
        return rgb

    @torch.inference_mode()
    def probabilities(self, rgb: np.ndarray) -> np.ndarray:
        """Tumour probabilities of an RGB batch (N, H, W, 3): (N, 1, h, w), one per 32-pixel output."""
        start = time.perf_counter()
        # Channels-last tensors take oneDNN's fastest convolution paths on CPU (and tensor cores on GPU). Under
        # mixed precision the first convolution would cast the input anyway: cast it now and drop the float32 copy.
        x = to_input(rgb).to(self.device).contiguous(memory_format=torch.channels_last)
        if self.amp and (dtype := amp_dtype(self.device)) is not None:
            x = x.to(dtype)
        with autocast(self.device, self.amp):
            out = self.model(x)
        probs = torch.sigmoid(out.float()).cpu().numpy()
        self.costs["network_seconds"] += time.perf_counter() - start
        return probs


def _patch_mode(run: _MapRun, batch_size: int) -> np.ndarray:
    """Every tissue window read and classified on its own, ``batch_size`` at a time (the reference)."""
    geometry = run.geometry
    rows, cols = np.nonzero(run.todo)
    xs, ys = geometry.centres(rows, cols)
    half = geometry.patch_size // 2
    size = (geometry.patch_size, geometry.patch_size)

    def batches():
        for start in range(0, len(rows), batch_size):
            stop = min(start + batch_size, len(rows))
            patches = np.stack([run.read((int(x) - half, int(y) - half), size)
                                for x, y in zip(xs[start:stop], ys[start:stop])])
            yield start, stop, patches

    out = np.zeros(geometry.shape, np.float32)
    for start, stop, patches in prefetch(batches()):
        out[rows[start:stop], cols[start:stop]] = run.probabilities(patches).reshape(-1)
        run.on_progress(stop, len(rows))
    return out


def _tiled_mode(run: _MapRun, tile_outputs: int) -> np.ndarray:
    """Fully convolutional tiles of up to ``tile_outputs`` x ``tile_outputs`` map pixels over the tissue
    (:func:`tile_plan`)."""
    geometry, todo = run.geometry, run.todo
    k = geometry.stride // OUTPUT_STRIDE

    def side(n: int) -> int:
        # Fine outputs every 32 px from the first window centre to the last; every k-th is a map pixel.
        return geometry.patch_size + OUTPUT_STRIDE * k * (n - 1)

    tiles = tile_plan(todo, tile_outputs, side)
    run.costs["tiles"] = len(tiles)
    ox, oy = geometry.origin
    half = geometry.patch_size // 2

    def reads():
        for i0, j0, h, w in tiles:
            x = int(ox + j0 * geometry.stride) - half
            y = int(oy + i0 * geometry.stride) - half
            yield i0, j0, h, w, run.read((x, y), (side(w), side(h)))

    out = np.zeros(geometry.shape, np.float32)
    last_size = 0
    for done, (i0, j0, h, w, rgb) in enumerate(prefetch(reads()), start=1):
        if rgb.size > last_size:  # the blocks freed by a smaller tile do not fit this one: give them back first
            release_free_memory()
        last_size = rgb.size
        probs = run.probabilities(rgb[None])[0, 0][::k, ::k]
        out[i0:i0 + h, j0:j0 + w] = probs[:h, :w]
        run.on_progress(done, len(tiles))
    return out * todo


def probability_map(slide: str | Path | Slide, model: PatchClassifier, stride: int = 32,
                    tissue: TissueMask | None = None, mode: str = "tiled", device: torch.device | None = None,
                    amp: bool = True, tile_outputs: int | None = None, batch_size: int = 32,
                    stain_normalization: str = "none",
                    on_progress: Callable[[int, int], None] = lambda done, total: None) -> tuple[np.ndarray, dict]:
    """The tumour probability map of one slide and its description (geometry, mode, counts).

    Args:
        slide: a slide file, or an open :class:`~metastasis.data.slide.Slide` (whose thumbnail the tissue mask reuses).
        tissue: the slide's tissue mask; computed (1/32) when not given.
        mode: ``tiled`` (fully convolutional tiles of ``tile_outputs`` x ``tile_outputs`` outputs; ``None``: as
            many as fit the measured default tile of 2240 pixels, :func:`~metastasis.config.default_tile_outputs`)
            or ``patch`` (``batch_size`` windows at a time).
        stain_normalization: the recipe's (``none`` or ``macenko``: pixels normalised with the slide's stain
            vectors, estimated once, as in training; the vectors go into the description).
        on_progress: called with (units done, units total) after each tile or batch.
    """
    if stain_normalization not in STAIN_NORMALIZATIONS:
        raise UserError(f"stain_normalization must be one of {STAIN_NORMALIZATIONS}, got {stain_normalization!r}")
    if mode not in MODES:
        raise UserError(f"mode must be one of {MODES}, got {mode!r}")
    if stride < 1 or mode == "tiled" and stride % OUTPUT_STRIDE:
        raise UserError(f"the tiled mode needs a stride that is a multiple of {OUTPUT_STRIDE}, got {stride} "
                         "(use mode 'patch' for other strides)")
    if tile_outputs is None:
        tile_outputs = default_tile_outputs(stride, model.patch_size)
    if tile_outputs < 1 or batch_size < 1:
        raise UserError("tile_outputs and batch_size must be positive")
    device = device or next(model.parameters()).device
    # Batch norms folded into the convolutions: the same network, faster (any other net runs as given).
    net = fold_batchnorm(model) if isinstance(model, PatchClassifier) else model.eval()
    net = net.to(device, memory_format=torch.channels_last)
    with opened(slide) as slide:
        if tissue is None:
            tissue = compute_tissue_mask(slide)[0]
        geometry = MapGeometry(stride, model.patch_size, slide.dimensions)
        if tuple(tissue.level0_size) != geometry.level0_size:
            raise UserError(f"{slide.path}: the tissue mask is for a {tissue.level0_size} slide, the slide is "
                            f"{geometry.level0_size}")
        todo = tissue_pixels(geometry, tissue)
        start = time.perf_counter()
        normalizer = StainNormalizer(slide_stain_vectors(slide, tissue)) \
            if stain_normalization == "macenko" else None
        run = _MapRun(slide.handle, slide.path, net, geometry, todo, device, amp, on_progress, normalizer)
        if mode == "tiled":
            probs = _tiled_mode(run, tile_outputs)
        else:
            probs = _patch_mode(run, batch_size)
        seconds = time.perf_counter() - start
    info = {"slide": str(slide.path), "mode": mode, **geometry.to_dict(), "tissue_outputs": int(todo.sum()),
            "seconds": round(seconds, 3), "outputs_per_second": round(int(todo.sum()) / max(seconds, 1e-9), 1),
            **({"tile_outputs": tile_outputs, "tiles": run.costs["tiles"]} if mode == "tiled"
               else {"batch_size": batch_size}),
            "read_seconds": round(run.costs["read_seconds"], 3),
            "network_seconds": round(run.costs["network_seconds"], 3),
            "stain_normalization": stain_normalization,
            **({"stain_vectors": normalizer.source.to_dict(), "stain_seconds": round(run.costs["stain_seconds"], 3)}
               if normalizer else {}),
            # level-0 pixels read per tissue output: 1024 would be no overlap and no glass (patch mode: P^2)
            "pixels_read_per_output": round(run.costs["pixels_read"] / max(int(todo.sum()), 1), 1)}
    return probs, info


@dataclasses.dataclass(frozen=True)
class _MapJob:
    """One slide's map to make, with what a process needs to make it (picklable, for other processes)."""

    slide: Path
    npy: Path
    mask: Path | None
    made_with: dict


@dataclasses.dataclass(frozen=True)
class _MapSettings:
    stride: int
    mode: str
    device: torch.device | None
    amp: bool
    tile_outputs: int | None
    batch_size: int
    checkpoint: str
    stain_normalization: str


def _make_maps(jobs: Sequence[_MapJob], model: PatchClassifier, settings: _MapSettings) -> int:
    """Make this rank's share of the maps (all of them in one process); returns how many it made."""
    rank = current_rank()
    jobs = rank.shard(jobs)
    device = rank_device(settings.device or next(model.parameters()).device, rank)
    progress = Progress(len(jobs), "slides" if rank.world == 1 else f"slides of rank {rank.rank}", logger)
    for job in jobs:
        tissue = TissueMask.load(job.mask) if job.mask is not None else None
        last_log = [time.perf_counter()]

        def report(done: int, total: int, name: str = job.slide.name) -> None:
            if time.perf_counter() - last_log[0] > 30 or done == total:
                logger.info("%s: %d/%d %s", name, done, total, "tiles" if settings.mode == "tiled" else "patches")
                last_log[0] = time.perf_counter()

        with Slide(job.slide) as slide:  # opened once: the tissue mask, the map and the heatmap share its thumbnail
            probs, info = probability_map(slide, model, settings.stride, tissue, settings.mode, device, settings.amp,
                                          settings.tile_outputs, settings.batch_size, settings.stain_normalization,
                                          on_progress=report)
            write_map(job.npy, probs, {**info, "checkpoint": settings.checkpoint, "made_with": job.made_with}, slide)
        release_free_memory()  # the slide's thumbnail, map and tiles go back before the next slide starts
        progress.step(f"{job.slide.name}: {info['tissue_outputs']} outputs in {info['seconds']:.1f} s "
                      f"({info['outputs_per_second']:.0f}/s, {settings.mode}), max probability "
                      f"{float(probs.max()):.3f}")
    return len(jobs)


def infer_slides(slides: Sequence[str | Path], model: PatchClassifier, out_dir: str | Path, stride: int = 32,
                 mask_dir: str | Path | None = None, mode: str = "tiled", device: torch.device | None = None,
                 amp: bool = True, tile_outputs: int | None = None, batch_size: int = 32,
                 overwrite: bool = False, checkpoint: str = "", stain_normalization: str = "none",
                 processes: int = 1, threads: int = 0) -> list[Path]:
    """Probability maps of a folder's worth of slides, resumable: a slide whose JSON exists is skipped.

    ``stain_normalization`` must be the one the model was trained with (the checkpoint's recipe records it).

    Tissue masks come from ``mask_dir`` (``NAME_tissue.png``, as ``metastasis tissue`` writes them) when given and
    present, else are computed. Returns the ``.npy`` paths.

    ``processes``: the slides to make are shared out over that many processes (``threads`` PyTorch threads each;
    0: the cores shared out), on CUDA one GPU each (:func:`medcore.distributed.run_processes`). Under ``torchrun``
    every rank runs this: each checks every input, rank 0 claims the folder, and each makes its share.
    """
    slides = [Path(s) for s in slides]
    if not slides:
        raise UserError("no slides given")
    check_distinct_names(slides, "slides", "probability maps")
    for path in slides:  # every slide must be one before any work starts (headers only: each opens once, below)
        check_slide_file(path)
    out_dir = Path(out_dir)
    weights = Path(checkpoint) / BUNDLE_WEIGHTS if checkpoint and Path(checkpoint).is_dir() else Path(checkpoint)
    model_digest = file_digest(weights) if checkpoint and weights.is_file() else "(in memory)"

    def finished(npy: Path) -> bool:
        return npy.is_file() and npy.with_suffix(".json").is_file() and not overwrite

    def mask_png(path: Path) -> Path | None:
        png = mask_paths(mask_dir, path)[0] if mask_dir is not None else None
        return png if png is not None and png.is_file() else None

    def check_mask(path: Path) -> None:
        """The slide's mask in ``mask_dir``, if any, checked from its JSON and PNG header to be this slide's."""
        png = mask_png(path)
        if png is not None:
            slide = str(TissueMask.describe(png).get("slide", ""))
            if slide and Path(slide).stem != path.stem:
                raise UserError(f"{png}: the tissue mask of {slide}, not of {path}")

    def made_with(path: Path) -> dict:
        """What decides a slide's map: a rerun that asks for other values refuses to keep it."""
        png = mask_png(path)
        return {"slide": path.name, "slide_bytes": path.stat().st_size, "checkpoint": model_digest,
                "stride": stride, "mode": mode, "stain_normalization": stain_normalization,
                "tissue_mask": file_digest(png) if png is not None else "computed"}

    for path in slides:  # kept maps must be of this run's settings (checked before any work)
        npy = out_dir / f"{path.stem}.npy"
        if finished(npy):
            check_described(npy.with_suffix(".json"), "probability map description", made_with(path),
                            "pass --overwrite to recompute the map, or choose another --out")
    todo = [p for p in slides if not finished(out_dir / f"{p.stem}.npy")]
    for path in todo:  # every mask is checked before the first map is written (decoded when its slide's turn comes)
        check_mask(path)
    jobs = [_MapJob(p, out_dir / f"{p.stem}.npy", mask_png(p), made_with(p)) for p in todo]
    settings = _MapSettings(stride, mode, device, amp, tile_outputs, batch_size, checkpoint, stain_normalization)
    if len(slides) > len(todo):
        logger.info("kept existing maps of %d slides in %s", len(slides) - len(todo), out_dir)
    with joined_group() as rank:  # under torchrun: rank 0 claims the folder, then every rank makes its share
        if rank.main:
            claim_output_dir(out_dir, "probability maps", [f"{p.stem}{end}" for p in todo for end in MAP_ENDINGS])
        rank.barrier()
        if rank.world > 1 or processes == 1 or len(jobs) <= 1:
            _make_maps(jobs, model, settings)
        else:
            run_processes(min(processes, len(jobs)), _make_maps, jobs, copy.deepcopy(model).cpu(), settings,
                          threads=threads)
        rank.barrier()
    return [out_dir / f"{p.stem}.npy" for p in slides]
