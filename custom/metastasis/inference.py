"""Whole-slide inference: tumour probability maps at 1/stride of level 0, restricted to tissue.

Geometry (stored with every map): map pixel (row i, column j) is the tumour probability of the ``patch_size``
window centred at level-0 ``(origin_x + j * stride, origin_y + i * stride)``, with ``origin = (stride / 2,
stride / 2)``: map pixel (i, j) sits over the level-0 block ``[j s, (j + 1) s) x [i s, (i + 1) s)``, so the map is
the slide at 1/stride (``ceil(W / s) x ceil(H / s)``). Windows reaching past the slide's edge see white glass.
Only map pixels whose centre lies on tissue are evaluated; the others are 0.

Two modes compute the same map:

* ``patch``: every tissue window read and classified on its own (the usual way; the reference);
* ``tiled``: the network is fully convolutional (average pool + 1x1 convolution head), so one large tile of
  ``patch_size + 32 (T - 1)`` pixels gives T x T outputs at once, neighbouring windows sharing their computation.
  Tiles overlap by ``patch_size - 32`` pixels, so the output grid is exact and seamless (``stride`` must be a
  multiple of 32; for ``stride = 32 k`` every k-th output is kept). :func:`tile_plan` lays the tiles over the
  tissue, at most ``T`` x ``T`` outputs each. Values differ from the ``patch`` mode only through the
  convolutions' zero padding at a lone patch's border (benchmarks/results/slide_inference.md measures by how much).

With a recipe trained on stain-normalised patches (``stain_normalization = macenko``), every pixel read is
normalised with the slide's stain vectors (:mod:`metastasis.stain`), as its training patches were.

Both modes run the network with its batch norms folded into the convolutions (:func:`~metastasis.model.
fold_batchnorm`). A background thread reads (and OpenSlide decodes) the next tiles while the network runs on the
current one; a bounded queue keeps memory flat whatever the slide size, and freed memory goes back to the system
before a tile larger than the last and after each slide (glibc would keep it, and a folder run's memory would
ratchet up from slide to slide). Outputs per slide, written atomically with the JSON last (a slide with its JSON
is finished; a re-run skips it): ``NAME.npy`` (float32 map), ``NAME.json`` (geometry, mode, checkpoint, timing
and where it went) and ``NAME_heatmap.png`` (the map over the slide's thumbnail).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import queue
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import openslide
import torch

from medcore.device import amp_dtype, autocast
from medcore.errors import UserError
from medcore.files import (atomic_path, check_distinct_names, claim_output_dir, read_json, read_npy,
                           require_file, write_json)
from medcore.memory import release_free_memory
from medcore.provenance import check_described, file_digest
from medcore.progress import Progress

from .config import STAIN_NORMALIZATIONS, default_tile_outputs
from .model import OUTPUT_STRIDE, PatchClassifier, fold_batchnorm
from .slide import Slide, open_slide, opened, read_rgb
from .stain import StainNormalizer, slide_stain_vectors
from .tissue import TissueMask, compute_tissue_mask
from .transforms import to_input

__all__ = ["MODES", "MapGeometry", "tile_plan", "probability_map", "load_map", "write_heatmap",
           "infer_slides"]

logger = logging.getLogger(__name__)

MODES = ("tiled", "patch")


@dataclasses.dataclass(frozen=True)
class MapGeometry:
    """Where a probability map's pixels lie on the slide (see the module docstring)."""

    stride: int
    patch_size: int
    level0_size: tuple[int, int]  # slide (width, height)

    @property
    def origin(self) -> tuple[float, float]:
        """Level-0 (x, y) of the centre of map pixel (0, 0)."""
        return self.stride / 2, self.stride / 2

    @property
    def shape(self) -> tuple[int, int]:
        """Map (rows, columns)."""
        width, height = self.level0_size
        return math.ceil(height / self.stride), math.ceil(width / self.stride)

    def centres(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Level-0 (x, y) of the window centres of map pixels (rows, cols)."""
        ox, oy = self.origin
        return ox + np.asarray(cols) * self.stride, oy + np.asarray(rows) * self.stride

    def to_dict(self) -> dict:
        return {"stride": self.stride, "patch_size": self.patch_size, "level0_size": list(self.level0_size),
                "origin": list(self.origin), "shape": list(self.shape)}


def _tissue_map(geometry: MapGeometry, tissue: TissueMask) -> np.ndarray:
    """Which map pixels have their window centre on tissue (built row and column-wise: no per-pixel arrays)."""
    n_rows, n_cols = geometry.shape
    xs, ys = geometry.centres(np.zeros(1), np.arange(n_cols))[0], geometry.centres(np.arange(n_rows), np.zeros(1))[1]
    cols = np.floor(xs / tissue.downsample).astype(np.int64)
    rows = np.floor(ys / tissue.downsample).astype(np.int64)
    col_ok = (cols >= 0) & (cols < tissue.mask.shape[1])
    row_ok = (rows >= 0) & (rows < tissue.mask.shape[0])
    todo = np.zeros(geometry.shape, bool)
    todo[np.ix_(row_ok, col_ok)] = tissue.mask[np.ix_(rows[row_ok], cols[col_ok])]
    return todo


def _prefetch(items: Iterator, depth: int = 3) -> Iterator:
    """Produce ``items`` in a background thread, at most ``depth`` ahead (OpenSlide decodes outside the GIL)."""
    box: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                box.put(item)
            box.put(done)
        except BaseException as err:  # hand the reader's error to the consumer
            box.put(err)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item = box.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a reader waiting on a full queue
            try:
                box.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


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
    for start, stop, patches in _prefetch(batches()):
        out[rows[start:stop], cols[start:stop]] = run.probabilities(patches).reshape(-1)
        run.on_progress(stop, len(rows))
    return out


def tile_plan(todo: np.ndarray, tile_outputs: int, tile_side: Callable[[int], int],
              smallest: int = 8) -> list[tuple[int, int, int, int]]:
    """Boxes ``(row, col, rows, cols)`` of map pixels that cover every ``todo`` pixel, each computed as one tile.

    The map is cut into blocks of ``tile_outputs`` x ``tile_outputs`` pixels. A block is shrunk to its tissue's
    bounding box, then split into quarters (recursively, down to ``smallest``) when the quarters' tiles, each
    shrunk to its own tissue, cost fewer input pixels in all: every tile pays a margin of ``patch - 32`` pixels
    around its outputs, so splitting pays only where it leaves enough glass out. ``tile_side(n)`` is the input side
    of a tile of ``n`` map pixels. A tile is never larger than a block, which bounds memory.
    """
    def cost(box: tuple[int, int, int, int]) -> int:
        return tile_side(box[2]) * tile_side(box[3])

    def plan(i0: int, j0: int, rows: int, cols: int) -> list[tuple[int, int, int, int]]:
        block = todo[i0:i0 + rows, j0:j0 + cols]
        on_rows, on_cols = np.flatnonzero(block.any(1)), np.flatnonzero(block.any(0))
        if not len(on_rows):
            return []
        whole = [(int(i0 + on_rows[0]), int(j0 + on_cols[0]), int(on_rows[-1] - on_rows[0] + 1),
                  int(on_cols[-1] - on_cols[0] + 1))]
        if max(rows, cols) <= smallest or block.all():
            return whole
        r, c = (rows + 1) // 2, (cols + 1) // 2
        quarters = ((0, 0, r, c), (0, c, r, cols - c), (r, 0, rows - r, c), (r, c, rows - r, cols - c))
        parts = [box for di, dj, h, w in quarters if h and w for box in plan(i0 + di, j0 + dj, h, w)]
        return parts if sum(map(cost, parts)) < cost(whole[0]) else whole

    n_rows, n_cols = todo.shape
    return [box for i0 in range(0, n_rows, tile_outputs) for j0 in range(0, n_cols, tile_outputs)
            for box in plan(i0, j0, min(tile_outputs, n_rows - i0), min(tile_outputs, n_cols - j0))]


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
    for done, (i0, j0, h, w, rgb) in enumerate(_prefetch(reads()), start=1):
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
        slide: a slide file, or an open :class:`~metastasis.slide.Slide` (whose thumbnail the tissue mask reuses).
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
        todo = _tissue_map(geometry, tissue)
        start = time.perf_counter()
        normalizer = StainNormalizer(slide_stain_vectors(slide.handle, slide.path)) \
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


def load_map(npy: str | Path) -> tuple[np.ndarray, dict]:
    """A probability map written by :func:`infer_slides` and its description (the JSON next to it), checked: the
    geometry must be a map of its slide (shape ``ceil(size / stride)``, origin ``stride / 2``), the values finite
    probabilities. Errors name the file and the problem."""
    npy = Path(npy)
    meta_path = npy.with_suffix(".json")
    if npy.suffix.lower() != ".npy":
        raise UserError(f"{npy}: not a probability map (expected NAME.npy, with its NAME.json beside it)")
    require_file(npy, "probability map file")
    meta = read_json(meta_path, "probability map description")
    problems = [key for key, ok in _MAP_FIELDS.items() if not isinstance(meta, dict) or not ok(meta.get(key))]
    if problems:
        raise UserError(f"{meta_path}: not a probability map description (missing or malformed: "
                        f"{', '.join(problems)})")
    geometry = MapGeometry(meta["stride"], 0, tuple(meta["level0_size"]))
    if list(geometry.shape) != list(meta["shape"]) or list(geometry.origin) != list(meta["origin"]):
        raise UserError(f"{meta_path}: a map of shape {meta['shape']} from origin {meta['origin']} at stride "
                        f"{meta['stride']} does not cover the {meta['level0_size'][0]}x{meta['level0_size'][1]} "
                        f"slide (expected shape {list(geometry.shape)} from {list(geometry.origin)})")
    probs = read_npy(npy, "probability map")
    if list(probs.shape) != list(meta["shape"]) or probs.ndim != 2:
        raise UserError(f"{npy}: map of shape {probs.shape}, its JSON says {meta.get('shape')}")
    if probs.dtype.kind != "f" or probs.size and not (np.isfinite(probs).all() and 0 <= probs.min()
                                                      and probs.max() <= 1):
        raise UserError(f"{npy}: not a probability map (expected finite floats in [0, 1], got {probs.dtype})")
    return probs, meta


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: What :func:`load_map` requires of a map's JSON (the geometry :class:`MapGeometry` writes and the slide).
_MAP_FIELDS = {
    "slide": lambda v: isinstance(v, str) and bool(v),
    "stride": lambda v: _whole(v) and 0 < v <= 1 << 20,
    "origin": lambda v: isinstance(v, list) and len(v) == 2 and all(isinstance(c, (int, float)) for c in v),
    "shape": lambda v: isinstance(v, list) and len(v) == 2 and all(_whole(c) and c >= 0 for c in v),
    "level0_size": lambda v: isinstance(v, list) and len(v) == 2 and all(_whole(c) and 0 < c < 1 << 31 for c in v),
    "mpp": lambda v: v is None or isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1e6,
}


def write_heatmap(slide: str | Path | Slide, probs: np.ndarray, stride: int, path: str | Path,
                  alpha: float = 0.6) -> Path:
    """PNG of the probability map (jet colours where it is above 0) over the slide's thumbnail at 1/stride
    (``slide``: a file, or an open :class:`~metastasis.slide.Slide` whose thumbnail is reused)."""
    import matplotlib

    with opened(slide) as slide:
        rgb = slide.downsampled(stride)[0]
    h, w = min(rgb.shape[0], probs.shape[0]), min(rgb.shape[1], probs.shape[1])
    out = rgb[:h, :w].copy()  # the thumbnail is the open Slide's cached one: paint on a copy
    shown = probs[:h, :w] > 0
    # Colours of the shown pixels only, as bytes: a 100k x 200k slide's map has 20 million pixels, and the
    # colormap's float64 RGBA of all of them alone would take 625 MB.
    colours = matplotlib.colormaps["jet"](probs[:h, :w][shown], bytes=True)[:, :3].astype(np.float32)
    out[shown] = np.rint((1 - alpha) * out[shown].astype(np.float32) + alpha * colours).astype(np.uint8)
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(out).save(tmp, format="PNG")
    return Path(path)


def infer_slides(slides: Sequence[str | Path], model: PatchClassifier, out_dir: str | Path, stride: int = 32,
                 mask_dir: str | Path | None = None, mode: str = "tiled", device: torch.device | None = None,
                 amp: bool = True, tile_outputs: int | None = None, batch_size: int = 32,
                 overwrite: bool = False, checkpoint: str = "", stain_normalization: str = "none") -> list[Path]:
    """Probability maps of a folder's worth of slides, resumable: a slide whose JSON exists is skipped.

    ``stain_normalization`` must be the one the model was trained with (the checkpoint's recipe records it).

    Tissue masks come from ``mask_dir`` (``NAME_tissue.png``, as ``metastasis tissue`` writes them) when given and
    present, else are computed. Returns the ``.npy`` paths.
    """
    from .tissue import mask_paths

    slides = [Path(s) for s in slides]
    if not slides:
        raise UserError("no slides given")
    check_distinct_names(slides, "slides", "probability maps")
    for path in slides:  # every slide must open before any work starts
        open_slide(path).close()
    out_dir = Path(out_dir)
    model_digest = file_digest(checkpoint) if checkpoint and Path(checkpoint).is_file() else "(in memory)"

    def finished(npy: Path) -> bool:
        return npy.is_file() and npy.with_suffix(".json").is_file() and not overwrite

    def mask_png(path: Path) -> Path | None:
        png = mask_paths(mask_dir, path)[0] if mask_dir is not None else None
        return png if png is not None and png.is_file() else None

    def tissue_of(path: Path) -> TissueMask | None:
        """The slide's mask from ``mask_dir`` (None: compute it), checked to be this slide's."""
        png = mask_png(path)
        if png is None:
            return None
        tissue = TissueMask.load(png)
        if tissue.slide and Path(tissue.slide).stem != path.stem:
            raise UserError(f"{png}: the tissue mask of {tissue.slide}, not of {path}")
        return tissue

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
    for path in todo:  # every mask is checked before the first map is written (one in memory at a time)
        tissue_of(path)
    claim_output_dir(out_dir, "probability maps", [f"{p.stem}{end}" for p in todo
                                                   for end in (".npy", ".json", "_heatmap.png")])
    progress = Progress(len(slides), "slides", logger)
    written = []
    for path in slides:
        npy = out_dir / f"{path.stem}.npy"
        written.append(npy)
        if finished(npy):
            progress.step(f"kept existing {npy.name}")
            continue
        tissue = tissue_of(path)
        last_log = [time.perf_counter()]

        def report(done: int, total: int, name: str = path.name) -> None:
            if time.perf_counter() - last_log[0] > 30 or done == total:
                logger.info("%s: %d/%d %s", name, done, total, "tiles" if mode == "tiled" else "patches")
                last_log[0] = time.perf_counter()

        with Slide(path) as slide:  # opened once: the tissue mask, the map and the heatmap share its thumbnail
            probs, info = probability_map(slide, model, stride, tissue, mode, device, amp, tile_outputs,
                                          batch_size, stain_normalization, on_progress=report)
            mpp = slide.mpp
            with atomic_path(npy) as tmp:
                np.save(tmp, probs)
            write_heatmap(slide, probs, stride, out_dir / f"{path.stem}_heatmap.png")
        # the slide by its absolute path and pixel size: detect and evaluate need neither the folder infer ran
        # in nor the slide itself
        write_json(npy.with_suffix(".json"), {**info, "slide": str(path.resolve()), "mpp": mpp,
                                              "checkpoint": checkpoint, "max_probability":
                                              float(probs.max()) if probs.size else 0.0,
                                              "made_with": made_with(path)})
        release_free_memory()  # the slide's thumbnail, map and tiles go back before the next slide starts
        progress.step(f"{path.name}: {info['tissue_outputs']} outputs in {info['seconds']:.1f} s "
                      f"({info['outputs_per_second']:.0f}/s, {mode}), max probability {float(probs.max()):.3f}")
    return written
