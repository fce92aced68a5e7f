"""What every task's MONAI bundle shares: the folder layout, the metadata's common keys and provenance, the
measured numbers from a FLARE run's cross-site results, writing the bundle, and reading one back.

A bundle (MONAI's specification, ``docs/source/mb_specification.rst``) is a folder::

    configs/metadata.json    the metadata: versions, the network's data format, eval_metrics, provenance
    configs/inference.json   python -m monai.bundle run --config_file configs/inference.json
    models/model.pt          the network's state dict
    models/model.ts          the same network as TorchScript
    models/model.onnx        the same network as ONNX, checked against PyTorch with ONNX Runtime
    scripts/                 code the configs need that MONAI lacks (``scripts/<task>.py``)
    docs/README.md, LICENSE

Each task (``brats_fl.bundle``, ``metastasis.bundle``) supplies its network, its metadata's task-specific keys, its
inference config and its script; :func:`write_bundle` writes them all, the metadata last (it marks a finished
bundle), into a folder that is new or a bundle written before (any other file of a bundle's names is refused).
"""

from __future__ import annotations

import json
import subprocess
import warnings
from datetime import date
from pathlib import Path
from typing import Mapping, Sequence

import monai
import numpy as np
import torch

from medcore.errors import UserError
from medcore.files import atomic_path, claim_output_dir, load_torch, read_json, state_dict_of, write_json, write_text
from medcore.provenance import file_digest

from .crosssite import SERVER_BEST, SERVER_FINAL, ReportSpec, build_report, load_results

__all__ = ["BUNDLE_METADATA", "BUNDLE_WEIGHTS", "BUNDLE_TORCHSCRIPT", "BUNDLE_ONNX", "BUNDLE_INFERENCE", "bundle_files",
           "code_commit", "base_metadata", "checkpoint_provenance", "cross_site_metrics", "inference_base",
           "bundle_readme",
           "write_bundle", "read_bundle"]

BUNDLE_METADATA = "configs/metadata.json"
BUNDLE_INFERENCE = "configs/inference.json"
BUNDLE_WEIGHTS = "models/model.pt"
BUNDLE_TORCHSCRIPT = "models/model.ts"
BUNDLE_ONNX = "models/model.onnx"
#: ONNX opset of the export (ONNX Runtime and TensorRT 8.6 and later run it).
ONNX_OPSET = 17
#: Largest difference allowed between ONNX Runtime's and PyTorch's float32 logits, relative to the largest logit
#: (at least 1); the export is refused above it.
ONNX_TOLERANCE = 1e-4
_README, _LICENSE_FILE = "docs/README.md", "LICENSE"

_LICENSE = """Apache License, Version 2.0 (https://www.apache.org/licenses/LICENSE-2.0)

Copyright (c) clara-open contributors. The model weights in models/ were trained by the user who exported this
bundle, on their data; their use is governed by that data's terms as well.
"""


def bundle_files(script: str) -> tuple[str, ...]:
    """What a bundle whose code is ``scripts/<script>.py`` holds, relative to its folder."""
    return (BUNDLE_METADATA, BUNDLE_INFERENCE, BUNDLE_WEIGHTS, BUNDLE_TORCHSCRIPT, BUNDLE_ONNX, "scripts/__init__.py",
            f"scripts/{script}.py", _README, _LICENSE_FILE)


def code_commit() -> str:
    """The git commit of this code, or ``unknown`` outside a checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
    except OSError:
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def base_metadata(checkpoint: Path, command: str, required_packages: Mapping[str, str]) -> dict:
    """The metadata keys every bundle has the same way: the schema, version and changelog, the versions of MONAI,
    PyTorch, NumPy and ``required_packages``, authorship and intended use."""
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
                  "meta_schema_20220324.json",
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by {command} from {checkpoint.name}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": dict(required_packages),
        "authors": "clara-open contributors",
        "copyright": "Copyright (c) clara-open contributors",
        "intended_use": "Research only; not for clinical use.",
    }


def checkpoint_provenance(checkpoint: Path, settings: Mapping, evaluation: Mapping, **more: object) -> dict:
    """The ``provenance`` entry: export date, code commit, the checkpoint's name and digest, the recipe's settings,
    where ``eval_metrics`` came from, and ``more`` (task-specific: the inference window, ...)."""
    return {"exported": date.today().isoformat(), "code": {"package": "clara-open", "commit": code_commit()},
            "checkpoint": {"file": checkpoint.name, "sha256_16": file_digest(checkpoint)},
            "settings": dict(settings), **more, "evaluation": dict(evaluation)}


def cross_site_metrics(checkpoint: Path, spec: ReportSpec) -> tuple[dict, dict]:
    """``eval_metrics`` and where they come from: the cross-site report's row of this model
    (:func:`~medflare.crosssite.build_report`: per site and the AVE, weighted as the report weights it) from the
    results of the FLARE run the checkpoint belongs to (``<run>/app_server/<model>.pt`` beside
    ``<run>/cross_site_val/cross_val_results.json``). None found: empty metrics, and the description says so."""
    names = {"FL_global_model.pt": SERVER_FINAL, "best_FL_global_model.pt": SERVER_BEST}
    results_path = checkpoint.parent.parent / "cross_site_val" / "cross_val_results.json"
    model = names.get(checkpoint.name)
    if model is None or not results_path.is_file():
        return {}, {"source": "none: no cross-site results found next to the checkpoint; eval_metrics is empty"}
    report = build_report(load_results(results_path, spec), spec, resamples=0)
    if model not in report.models:
        return {}, {"source": f"none: {results_path} holds no row for {model}"}
    rows = {**report.scores[model], "AVE": report.average[model]}
    metrics = {f"{row}_{column}": round(values[column], 4) for row, values in rows.items() for column in report.columns}
    return metrics, {"source": str(results_path), "model": model, "split": "each site's cross-site evaluation data",
                     "items_per_site": {site: report.weights[site] for site in report.scores[model]},
                     "average": f"AVE: weighted by {report.weights_source}"}


def inference_base(script: str, dataset_dir: str) -> dict:
    """The entries every bundle's ``inference.json`` starts with: ``bundle_root``, the bundle's own code as
    ``@scripts`` (``scripts/<script>.py``), ``output_dir`` and ``dataset_dir`` (both overridable on the command
    line) and ``device`` (CUDA when there is one)."""
    return {
        "imports": ["$import sys", "$from importlib import import_module as load_module"],
        "bundle_root": ".",
        # The bundle's own code, found from bundle_root whatever the working folder is (no word "import" in an
        # expression with references: MONAI would parse it as an import statement).
        "scripts": f"$sys.path.insert(0, @bundle_root) or load_module('scripts.{script}')",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": dataset_dir,
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
    }


def bundle_readme(metadata: Mapping, run: str) -> str:
    """The bundle's ``docs/README.md``: its name and description, ``run`` (the task's "Run it" section, Markdown),
    how it was made (checkpoint, commit, settings, evaluation) and the measured numbers (``eval_metrics``)."""
    metrics = metadata["eval_metrics"]
    measured = "\n".join(f"| {k} | {v} |" for k, v in metrics.items()) if metrics else \
        "| (none) | this model was exported without cross-site results |"
    prov = metadata["provenance"]
    return f"""# {metadata['name']}

{metadata['description']}

## Run it

{run.strip()}

## How it was made

- checkpoint `{prov['checkpoint']['file']}` (sha256 {prov['checkpoint']['sha256_16']}...), code commit
  {prov['code']['commit']}
- training settings: `{json.dumps(prov['settings'], sort_keys=True)}`
- evaluation: {prov['evaluation'].get('source')}

## Measured

| metric | value |
| --- | --- |
{measured}

Intended use: {metadata['intended_use']}
"""


def export_onnx(network: torch.nn.Module, shapes: Sequence[Sequence[int]], path: str | Path) -> dict:
    """Write ``network`` (in eval mode, on the CPU) as ONNX to ``path``: input ``image``, output ``logits``, the
    batch and every spatial axis dynamic. Then run it with ONNX Runtime on a seeded random input of each of
    ``shapes`` (the first is the one traced; give a second of other sizes to check that the axes are dynamic) and
    compare with PyTorch: a difference above :data:`ONNX_TOLERANCE` raises ``RuntimeError``. Returns what the
    metadata says of the export (file, opset, axes, the checks and their differences)."""
    import onnxruntime

    dims = len(shapes[0])
    axes = {0: "batch", **{d: f"spatial_{d - 1}" for d in range(2, dims)}}
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(*shape, generator=generator) for shape in shapes]
    with warnings.catch_warnings():
        # The TorchScript-based exporter, deprecated since torch 2.9: the torch.export-based one refuses the
        # ResNet18's Python check of its input size (traced here as a constant: ONNX does not check it) and takes
        # 44 s for the SegResNet on 2 cores, against 8 s. ONNX Runtime checks the result either way.
        warnings.simplefilter("ignore")
        torch.onnx.export(network, (inputs[0],), str(path), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": axes, "logits": axes})
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    checks = []
    for x in inputs:
        with torch.no_grad():
            expected = network(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        scale = max(1.0, float(np.abs(expected).max()))
        difference = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
        if not difference <= ONNX_TOLERANCE * scale:
            raise RuntimeError(f"the ONNX export of {type(network).__name__} differs from PyTorch on an input of "
                               f"shape {list(x.shape)}: output {list(got.shape)} vs {list(expected.shape)}, largest "
                               f"difference {difference:.3g} (allowed {ONNX_TOLERANCE * scale:.3g})")
        checks.append({"input_shape": list(x.shape), "max_abs_difference": difference, "largest_logit": scale})
    return {"file": BUNDLE_ONNX, "opset": ONNX_OPSET, "input": "image", "output": "logits",
            "dynamic_axes": {str(k): v for k, v in axes.items()}, "tolerance_relative_to_largest_logit": ONNX_TOLERANCE,
            "checked_with": f"onnxruntime {onnxruntime.__version__} (CPU), seeded random inputs", "checks": checks}


def write_bundle(out: str | Path, script: str, network: torch.nn.Module, metadata: Mapping, inference: Mapping,
                 code: str, readme: str, onnx_shapes: Sequence[Sequence[int]]) -> Path:
    """Write a bundle to ``out``: ``network``'s state dict, TorchScript and ONNX (:func:`export_onnx` with
    ``onnx_shapes``; the metadata's ``onnx`` entry says what was checked), ``scripts/<script>.py`` holding
    ``code``, the inference config, README, LICENSE and, last, the metadata. ``out`` is refused when it holds a
    file of a bundle's names that this project did not write there."""
    out = claim_output_dir(out, "MONAI bundle", bundle_files(script))
    for folder in ("configs", "models", "scripts", "docs"):
        (out / folder).mkdir(exist_ok=True)
    network = network.eval()
    with atomic_path(out / BUNDLE_WEIGHTS) as tmp:
        torch.save(network.state_dict(), tmp)
    with atomic_path(out / BUNDLE_TORCHSCRIPT) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.x deprecates TorchScript; MONAI bundles use it
        torch.jit.script(network).save(str(tmp))
    with atomic_path(out / BUNDLE_ONNX) as tmp:
        metadata = {**metadata, "onnx": export_onnx(network, onnx_shapes, tmp)}
    write_text(out / "scripts/__init__.py", "")
    write_text(out / f"scripts/{script}.py", code)
    write_json(out / BUNDLE_INFERENCE, dict(inference))
    write_text(out / _README, readme)
    write_text(out / _LICENSE_FILE, _LICENSE)
    write_json(out / BUNDLE_METADATA, dict(metadata))  # last: marks a finished bundle
    return out


def read_bundle(folder: str | Path) -> tuple[dict, dict, dict]:
    """A bundle's weights (state dict), its provenance and its recipe's settings (what a checkpoint's
    ``train_conf`` holds), for loading a bundle wherever a checkpoint is taken. Errors name the file."""
    folder = Path(folder)
    meta_path = folder / BUNDLE_METADATA
    if not meta_path.is_file():
        raise UserError(f"{folder}: a folder, but not a MONAI bundle (no {BUNDLE_METADATA})")
    meta = read_json(meta_path, "bundle metadata")
    provenance = meta.get("provenance") if isinstance(meta, dict) else None
    if not isinstance(provenance, dict):
        raise UserError(f"{meta_path}: no provenance entry (not a bundle this project exported)")
    settings = provenance.get("settings")
    state = state_dict_of(load_torch(folder / BUNDLE_WEIGHTS, "bundle weights"), folder / BUNDLE_WEIGHTS)
    return state, provenance, dict(settings) if isinstance(settings, dict) else {}
