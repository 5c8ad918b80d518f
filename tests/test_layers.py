"""Layers that only point down: the import graph of `vcell/`, read with `ast` (nothing is imported).

Every `import vcell...` / `from vcell... import` in every file counts, also those inside function
bodies (a deferred import is still a dependency). Files are grouped into layers: a package
(`vcell.atlas`, `vcell.data`, ...) or a top-level module (`vcell.errors`, `vcell.files`, ...).
The allowed order, lowest first (a layer may import any layer before it, never one after it):

    errors, files, trees       no vcell imports beyond each other (trees: flatten, deep merge)
    compat                     private APIs of Ray, torch and Lightning, each once (imports none of vcell)
    config                     the typed config tree, YAML loading
    cluster                    the Ray cluster helper (train, tune and `vcell embed --tasks` use it)
    atlas                      the Zarr store, build, simulator, annotations
    data                       the streaming loader
    models                     the one VirtualCell and its enhancements (registers their config sections)
    train                      Lightning module, strategies, Ray Train driver and workers
    evaluate                   metrics, plots, embed/export/predict of a finished run
    tune                       Ray Tune campaigns of training runs (evaluated)
    submit                     cluster jobs: the Ray Jobs API, Slurm scripts, KubeRay manifests
    cli                        argument parsing for every command; calls the library

config <-> models, the one accepted exception: an enhancement's config section lives with the
enhancement (models/enhancements/*, which import config), and `config.model.ModelConfig` builds the
`model` section from the registry of enhancements (`vcell.models.registry`) and validates the set
against the catalogue (`vcell.models.catalogue`). Those two modules import no torch and no other
models module (their own test checks it), so loading a config never loads model code; the registry
imports the built-in enhancements by name the first time it is read. Moving both modules into
config would only hide that runtime edge from this test, so the two imports are listed in
ALLOWED_UPWARD with the reason; the test fails if one disappears (then delete the entry) or if
any other upward edge appears.

`test_no_cycles` reports each cycle between layers with the edges' file:line; `test_layer_order`
reports every import that points up.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vcell"
ORDER = ["vcell", "errors", "files", "trees", "compat", "config", "cluster", "atlas", "data", "models", "train", "evaluate", "tune", "submit", "cli"]
# (importing layer, imported module) -> why this upward edge is accepted
ALLOWED_UPWARD = {
    ("config", "vcell.models.registry"): "the model section is built from the registered enhancements' sections",
    ("config", "vcell.models.catalogue"): "model.name / model.enhancements are validated against the catalogue",
}
TORCH_FREE = ("vcell.models.registry", "vcell.models.catalogue")  # what config may import from models


def layer_of(module: str) -> str:
    """'vcell.train.worker' -> 'train'; 'vcell.errors' -> 'errors'; 'vcell' -> 'vcell'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def is_module(name: str) -> bool:
    return (PACKAGE / f"{name}.py").is_file() or (PACKAGE / name).is_dir()


def imported_modules(path: Path) -> list[tuple[str, int]]:
    """(vcell module, line) for every import of vcell in `path`, at any depth of the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names if alias.name.startswith("vcell.")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this file's package
                package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target == "vcell":  # `from vcell import x`: x is a module or a name of vcell/__init__
                found += [(f"vcell.{alias.name}" if is_module(alias.name) else "vcell", node.lineno)
                          for alias in node.names]
            elif target.startswith("vcell."):
                found.append((target, node.lineno))
    return found


def layer_edges() -> dict[tuple[str, str], list[str]]:
    """(from layer, to layer) -> ['vcell/x.py:12 imports vcell.y', ...] over the whole package."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        source = layer_of(module_name(path))
        for target, line in imported_modules(path):
            destination = layer_of(target)
            if destination != source:
                where = f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
                edges[(source, destination)].append(where)
    return edges


def find_cycles(edges: dict[tuple[str, str], list[str]]) -> list[list[str]]:
    """Every elementary cycle's layers (each reported once, starting at its smallest layer)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for source, destination in edges:
        graph[source].add(destination)
    cycles: list[list[str]] = []

    def walk(start: str, node: str, path: list[str]) -> None:
        for following in sorted(graph[node]):
            if following == start:
                cycles.append(path[:])
            elif following > start and following not in path:
                walk(start, following, [*path, following])

    for start in sorted(graph):
        walk(start, start, [start])
    return cycles


def describe(cycle: list[str], edges: dict[tuple[str, str], list[str]]) -> str:
    lines = [" -> ".join([*cycle, cycle[0]])]
    for source, destination in zip(cycle, [*cycle[1:], cycle[0]]):
        lines += [f"    {source} -> {destination}: {where}" for where in edges[(source, destination)]]
    return "\n".join(lines)


def test_every_layer_is_known():
    layers = {layer_of(module_name(path)) for path in PACKAGE.rglob("*.py")}
    assert layers <= set(ORDER), f"place these in ORDER (tests/test_layers.py): {sorted(layers - set(ORDER))}"


def checked_edges() -> dict[tuple[str, str], list[str]]:
    """`layer_edges` without the imports ALLOWED_UPWARD accepts."""
    edges = {key: [where for where in places if (key[0], where.split(" imports ")[1]) not in ALLOWED_UPWARD]
             for key, places in layer_edges().items()}
    return {key: places for key, places in edges.items() if places}


def test_no_cycles():
    edges = checked_edges()
    cycles = find_cycles(edges)
    assert not cycles, "import cycles between layers:\n" + "\n".join(describe(c, edges) for c in cycles)


def test_layer_order():
    upward = [where for (source, destination), places in checked_edges().items()
              if ORDER.index(destination) > ORDER.index(source) for where in places]
    assert not upward, "imports that point up the layer order (see this file's docstring):\n  " + "\n  ".join(upward)


def test_allowed_exceptions_still_exist():
    present = {(source, where.split(" imports ")[1]) for (source, _), places in layer_edges().items() for where in places}
    stale = set(ALLOWED_UPWARD) - present
    assert not stale, f"these allowed upward imports are gone: delete them from ALLOWED_UPWARD: {sorted(stale)}"


def test_what_config_imports_from_models_stays_torch_free():
    for module in TORCH_FREE:
        path = PACKAGE.parent / (module.replace(".", "/") + ".py")
        tree = ast.parse(path.read_text())
        names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        names += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        assert not [n for n in names if n.split(".")[0] == "torch"], f"{module} imports torch"
        assert not [n for n in names if n.startswith("vcell.models.") and n not in TORCH_FREE], \
            f"{module} imports other models modules"


def test_the_walker_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from vcell.train.ray_train import train\n")
    assert imported_modules(source) == [("vcell.train.ray_train", 2)]
