"""The package's structure: no module imports itself back through others, the data layer does not import the models,
and the config check knows no particular component (a regression fails here, not in review)."""

from __future__ import annotations

import ast
from pathlib import Path

import ami_lightning
import ami_lightning.attacks

PACKAGE = Path(ami_lightning.__file__).resolve().parent
ATTACKS = Path(ami_lightning.attacks.__file__).resolve().parent  # installed as ami_lightning.attacks


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (packages' ``__init__`` facades left out: they re-export)."""
    found = {}
    for root, prefix in ((PACKAGE, "ami_lightning"), (ATTACKS, "ami_lightning.attacks")):
        for path in root.rglob("*.py"):
            if path.name == "__init__.py" or (root == PACKAGE and ATTACKS in path.parents):
                continue
            found[".".join([prefix, *path.relative_to(root).with_suffix("").parts])] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its source (also under ``TYPE_CHECKING`` and inside
    functions)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_the_package_imports_itself_back() -> None:
    graph = import_graph()
    assert len(graph) > 50 and "ami_lightning.reporting.records" in graph
    assert graph["ami_lightning.reporting.results"] >= {"ami_lightning.reporting.records"}
    assert cycles(graph) == []


def test_the_data_layer_imports_no_model_and_validation_no_particular_component() -> None:
    graph = import_graph()
    data_to_models = {m: sorted(d for d in deps if d.startswith("ami_lightning.models."))
                      for m, deps in graph.items() if m.startswith("ami_lightning.data.")}
    assert {m: deps for m, deps in data_to_models.items() if deps} == {}
    particular = {"ami_lightning.detectors.ami", "ami_lightning.detectors.feature_squeezing",
                  "ami_lightning.models.classifiers", "ami_lightning.models.vgg_face", "ami_lightning.data.benign",
                  "ami_lightning.witnesses.witness_set"}
    assert graph["ami_lightning.pipeline.validation"] & particular == set()
