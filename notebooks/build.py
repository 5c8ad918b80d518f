"""Write the tutorial notebooks from their sources, and optionally execute them.

    python notebooks/build.py                    # notebooks/*.ipynb from notebooks/src/, not executed
    python notebooks/build.py --execute          # ... and run each, saving its outputs (make notebooks)
    python notebooks/build.py --execute temporal own_data     # only these
    SMOKE=1 python notebooks/build.py --execute --check       # tiny settings, outputs not saved (CI)

The twelve model notebooks come from ONE template, `src/model.py` (jupytext percent format), so
they cannot drift: `{{token}}`s in it are filled from `src/models.yaml` (prose per catalogue
model), and the markdown cell `{{readouts}}` becomes the read-out cells (markdown + code) of
`base` and of each of the model's enhancements. The other notebooks are one script each in
`src/`. tests/test_notebooks.py checks that the committed notebooks match their sources and runs
every one in smoke mode.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
import time
from pathlib import Path

import jupytext
import nbformat
import yaml

NOTEBOOKS = Path(__file__).resolve().parent
SOURCES = NOTEBOOKS / "src"
TEMPLATE = SOURCES / "model.py"
MODELS = SOURCES / "models.yaml"
GUIDES = ("own_data", "compare_models", "cluster")  # src/<name>.py -> <name>.ipynb
TOKEN = re.compile(r"\{\{(\w+)\}\}")
KERNEL = {"display_name": "Python 3", "language": "python", "name": "python3"}


def model_file(name: str) -> str:
    """Catalogue name -> the name of its config file and notebook ('temporal+memory' -> 'temporal_memory')."""
    return name.replace("+", "_")


def catalogue_order() -> dict[str, tuple[str, ...]]:
    from vcell.models.catalogue import catalogue

    return catalogue()


def fill(text: str, values: dict[str, str], where: str) -> str:
    def value(match: re.Match) -> str:
        if match.group(1) not in values:
            raise KeyError(f"{where}: no value for {{{{{match.group(1)}}}}}")
        return values[match.group(1)]

    return TOKEN.sub(value, text)


def readout_cells(enhancements: tuple[str, ...], readouts: dict) -> list:
    cells = []
    for name in ("base", *enhancements):
        entry = readouts[name]
        cells.append(nbformat.v4.new_markdown_cell(entry["markdown"].strip()))
        cells.append(nbformat.v4.new_code_cell(entry["code"].strip()))
    return cells


def model_notebook(name: str, enhancements: tuple[str, ...], text: str, table: dict) -> nbformat.NotebookNode:
    from vcell.models.catalogue import titles

    entry = table["models"][name]
    values = {"model": name, "file": model_file(name), "title": titles()[name], "adds": entry["adds"],
              "motivation": entry["motivation"].strip(), "enhancements": ", ".join(enhancements) or "none"}
    notebook = jupytext.reads(text, fmt="py:percent")
    cells = []
    for cell in notebook.cells:
        if cell.cell_type == "markdown" and cell.source.strip() == "{{readouts}}":
            cells += readout_cells(enhancements, table["readouts"])
        else:
            cell = copy.deepcopy(cell)
            cell.source = fill(cell.source, values, f"{TEMPLATE.name} for {name}")
            cells.append(cell)
    notebook.cells = cells
    return finish(notebook)


def finish(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Plain nbformat 4 cells with stable metadata (no jupytext header, no cell ids from the clock)."""
    out = nbformat.v4.new_notebook(metadata={"kernelspec": KERNEL, "language_info": {"name": "python"}})
    for index, cell in enumerate(notebook.cells):
        maker = nbformat.v4.new_markdown_cell if cell.cell_type == "markdown" else nbformat.v4.new_code_cell
        tags = cell.metadata.get("tags")
        new = maker(cell.source, metadata={"tags": tags} if tags else {})
        new.id = f"cell-{index:03d}"
        out.cells.append(new)
    return out


def sources() -> dict[str, nbformat.NotebookNode]:
    """Notebook name -> its notebook, unexecuted: the twelve models in catalogue order, then the guides."""
    text = TEMPLATE.read_text()
    table = yaml.safe_load(MODELS.read_text())
    notebooks = {model_file(name): model_notebook(name, members, text, table)
                 for name, members in catalogue_order().items()}
    for guide in GUIDES:
        notebooks[guide] = finish(jupytext.reads((SOURCES / f"{guide}.py").read_text(), fmt="py:percent"))
    return notebooks


def execute(notebook: nbformat.NotebookNode, name: str, km=None, timeout: int = 1800, keep_kernel: bool = False):
    """Run every cell in a new kernel started in notebooks/, or in `km`'s; (notebook, client).
    `keep_kernel` leaves the kernel running for the next notebook (`client.km`; `shutdown` it)."""
    from nbclient import NotebookClient

    client = NotebookClient(notebook, km=km, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    started = time.perf_counter()
    client.execute(cleanup_kc=not keep_kernel)
    print(f"{name}: executed in {time.perf_counter() - started:.0f} s", flush=True)
    return notebook, client


def shutdown(km) -> None:
    """Stop a kernel that `execute` left running (its manager is nbclient's asynchronous one)."""
    from nbclient.util import run_sync

    run_sync(km.shutdown_kernel)(now=True)


def source_view(notebook: nbformat.NotebookNode) -> list[tuple[str, str]]:
    """What must match between a committed notebook and its source: each cell's type and text."""
    return [(cell.cell_type, cell.source) for cell in notebook.cells]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebooks to write (default: all)")
    parser.add_argument("--execute", action="store_true", help="run each notebook and save it with its outputs")
    parser.add_argument("--check", action="store_true", help="with --execute: run, but write nothing")
    args = parser.parse_args(argv)
    notebooks = sources()
    unknown = [name for name in args.names if name not in notebooks]
    if unknown:
        parser.error(f"unknown notebook(s) {unknown}; choose from {', '.join(notebooks)}")
    for name in args.names or list(notebooks):
        notebook = notebooks[name]
        if args.execute:
            notebook, _ = execute(notebook, name)
        if not args.check:
            path = NOTEBOOKS / f"{name}.ipynb"
            temporary = path.with_suffix(".ipynb.tmp")
            nbformat.write(notebook, temporary)
            temporary.replace(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
