"""Data flows one way through the packages: every import (also those inside functions) goes from a later step of
the pipeline to an earlier one, or stays inside one step's own package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support import REPO

CUSTOM = REPO / "custom"
PACKAGES = ("medcore", "medflare", "brats_fl", "metastasis", "demodata")

#: Each module's step, by the longest matching prefix: a module may import only from earlier steps or from its own
#: prefix's group (a package's modules among themselves).
STEPS = {
    "medcore": 0,  # the plain core: nothing of the project
    "medflare": 1,  # the generic FLARE layer: the core, never a task
    # BraTS: data and its checks, the network and metrics; datalists; training; inference; the FLARE layer; CLI
    "brats_fl.data": 2, "brats_fl.config": 2, "brats_fl.metrics": 2, "brats_fl.model": 2,
    "brats_fl.datalist": 3, "brats_fl.transforms": 3, "brats_fl.report": 3,
    "brats_fl.engine": 4,
    "brats_fl.inference": 5, "brats_fl.bundle": 5, "brats_fl.task": 5,
    "brats_fl.learner": 6, "brats_fl.job": 7, "brats_fl.cli": 9,
    # metastasis: what is read; recipe, network, scores; training and whole-slide inference; evaluation of maps;
    # the FLARE layer; CLI
    "metastasis.data": 2, "metastasis.config": 2, "metastasis.metrics": 2,
    "metastasis.evaluation.staging": 2,  # CAMELYON17's staging rules and kappa: labels only, the core's files
    "metastasis.model": 3, "metastasis.report": 3,
    "metastasis.engine": 4, "metastasis.inference": 4,
    "metastasis.evaluation": 5, "metastasis.task": 5, "metastasis.bundle": 5,
    "metastasis.learner": 6, "metastasis.job": 7, "metastasis.cli": 9,
    # generated data: written with the tasks' readers and writers, used only by the command lines' make-data
    "demodata": 8,
}


#: The task packages' own ``__init__`` modules, which hold their docstrings only and import nothing.
ROOTS = {"brats_fl", "metastasis"}


def _group(module: str) -> str:
    """The longest prefix of ``module`` that :data:`STEPS` names (a module no step names is an error)."""
    if module in ROOTS:
        return module
    prefixes = [prefix for prefix in STEPS if module == prefix or module.startswith(prefix + ".")]
    assert prefixes, f"{module}: no step in STEPS (add it where it belongs in the pipeline)"
    return max(prefixes, key=len)


def _imports(path: Path, module: str) -> set[str]:
    """The project's modules ``module`` (at ``path``) imports, anywhere in it."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            names = [".".join(base + ([node.module] if node.module else []))]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        found |= {name for name in names if name.split(".")[0] in PACKAGES}
    return found


def _modules() -> list[tuple[str, Path]]:
    out = []
    for package in PACKAGES:
        for path in sorted((CUSTOM / package).rglob("*.py")):
            parts = path.relative_to(CUSTOM).with_suffix("").parts
            out.append((".".join(parts[:-1] if parts[-1] == "__init__" else parts), path))
    return out


def test_every_module_has_a_step():
    for module, _ in _modules():
        _group(module)  # raises on a module no step names


@pytest.mark.parametrize("module,path", _modules(), ids=lambda v: v if isinstance(v, str) else "")
def test_imports_go_from_later_steps_to_earlier_ones(module, path):
    here = _group(module)
    for imported in sorted(_imports(path, module)):
        there = _group(imported)
        assert there == here or STEPS.get(there, -1) < STEPS.get(here, 10), \
            f"{module} (step {STEPS[here]}) imports {imported} (step {STEPS[there]}): data would flow back"
