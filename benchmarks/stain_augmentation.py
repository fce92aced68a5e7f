"""Benchmark: how much do the stain augmentations change a patch's pixels, on tissue and on glass?

Tellez et al.'s "HED-light" is meant to vary each stain "a little". This measures it in pixel terms: on generated
H&E patches of both centres (``demodata.camelyon.make_scene``, level 0, the seed's 224 pixels, each holding
tissue and glass), per draw of the augmentation, the median absolute change per pixel and channel on the
0-1 scale, over tissue pixels (mean optical density above 0.25) and over glass pixels (below 0.08). Reported: the
median, 90th percentile and maximum of that per-draw median over all draws, for

* ``HEDJitter`` at several strengths (0.05 is Tellez's HED-light; off in the default recipe),
* ``StainVariation`` at several strengths (off in the default recipe),
* ``legacy_hed_0.05``: the HED jitter as it was before this benchmark (shift and scale drawn for H, E and DAB,
  shift in scikit-image's units ``log(rgb) / log(1e-6)``, 13.8 times smaller than optical density, and applied to
  glass as well), re-implemented here for the comparison.

Run: .venv/bin/python benchmarks/stain_augmentation.py [--patches 8] [--draws 200]
Writes benchmarks/results/stain_augmentation.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from metastasis.data.stain import RGB_FROM_HED, HEDJitter, StainVariation
from demodata.camelyon import make_scene

RESULTS = Path(__file__).resolve().parent / "results"
_HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
_SK_LOG = np.log(1e-6)


def legacy_hed_jitter(image: torch.Tensor, rng: np.random.Generator, s: float = 0.05) -> torch.Tensor:
    """The HED jitter before the fix: every stain (DAB too) scaled by U(1-s, 1+s) and shifted by U(-s, s) in
    scikit-image's units, glass included."""
    alpha, beta = rng.uniform(1 - s, 1 + s, 3), rng.uniform(-s, s, 3)
    od = torch.log(image.clamp(min=1e-6)).double() / _SK_LOG
    hed = torch.einsum("ij,ihw->jhw", torch.as_tensor(_HED_FROM_RGB), od)
    hed = hed * torch.as_tensor(alpha).view(3, 1, 1) + torch.as_tensor(beta).view(3, 1, 1)
    od = torch.einsum("ij,ihw->jhw", torch.as_tensor(RGB_FROM_HED), hed)
    return torch.exp(od * _SK_LOG).clamp(0, 1).float()


def patches(count: int, seed: int = 0) -> list[torch.Tensor]:
    """``count`` 224-pixel patches per centre (3, 224, 224) in [0, 1] on the tissue border of a generated tumour
    slide (difficulty 0.5), each holding tissue and glass (:meth:`~demodata.camelyon.SlideScene.border_patches`)."""
    out = []
    for centre in ("A", "B"):
        scene = make_scene(f"stain_{centre}", 8192, 6144, True, seed, 0, centre=centre, difficulty=0.5)
        out += [torch.as_tensor(np.clip(rgb, 0, 255) / 255.0, dtype=torch.float32).permute(2, 0, 1)
                for rgb in scene.border_patches(count)]
    return out


def measure(augment, images: list[torch.Tensor], draws: int) -> dict:
    """Per draw: the median |change| over tissue pixels and over glass pixels (all channels); summarised."""
    tissue_changes, glass_changes = [], []
    for index in range(draws):
        image = images[index % len(images)]
        od = -torch.log(image.clamp(min=1e-6)).mean(dim=0)
        change = (augment(image) - image).abs()
        tissue, glass = od > 0.25, od < 0.08
        tissue_changes.append(float(change[:, tissue].median()))
        glass_changes.append(float(change[:, glass].median()))

    def summary(values: list[float]) -> dict:
        return {"median": round(float(np.median(values)), 4), "p90": round(float(np.percentile(values, 90)), 4),
                "max": round(float(np.max(values)), 4), "draws": len(values)}

    return {"tissue": summary(tissue_changes), "glass": summary(glass_changes)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patches", type=int, default=8, help="patches per centre (default: 8)")
    parser.add_argument("--draws", type=int, default=200, help="draws per augmentation (default: 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the slides and the draws (default: 0)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    images = patches(args.patches, seed=args.seed)
    results = {}
    for strength in (0.02, 0.05, 0.1):
        jitter = HEDJitter(strength)
        jitter.set_random_state(seed=args.seed)
        results[f"hed_{strength}"] = measure(jitter, images, args.draws)
    for strength in (0.25, 0.5, 1.0):
        variation = StainVariation(strength)
        variation.set_random_state(seed=args.seed)
        results[f"variation_{strength}"] = measure(variation, images, args.draws)
    rng = np.random.default_rng(args.seed)
    results["legacy_hed_0.05"] = measure(lambda x: legacy_hed_jitter(x, rng), images, args.draws)
    record = {"patches": len(images), "patch_size": 224, "draws": args.draws, "seed": args.seed,
              "results": results}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "stain_augmentation.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = ["# Stain augmentations in pixel terms", "",
             f"{len(images)} generated H&E patches of 224 pixels (centres A and B, tissue next to glass), "
             f"{args.draws} draws each; per draw the median absolute change per pixel and channel on the 0-1 scale "
             "over tissue (mean optical density > 0.25) and glass (< 0.08) pixels; median / 90th percentile / "
             "maximum over the draws.", "",
             "| augmentation | tissue | glass |", "| --- | --- | --- |"]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{r[k]['median']:.4f} / {r[k]['p90']:.4f} / {r[k]['max']:.4f}" for k in ("tissue", "glass")) + " |")
    (RESULTS / "stain_augmentation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
