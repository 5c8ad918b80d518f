"""Plain-file gene annotations: pathway gene sets (GMT), pathway compartments and GRN edges (TSV).

Files are keyed by the atlas's gene IDs. Readers check everything a model would otherwise trip
over later, and fail with a `VCellError` naming the file, the line and the fix:

    sets = read_gmt("atlas.zarr/annotations/pathways.gmt")          # {name: [gene IDs]}
    mask, coverage = align_to_vocabulary(sets, atlas_gene_ids)       # (n_sets, n_genes) bool
    edges = read_grn_edges("atlas.zarr/annotations/grn_edges.tsv")  # source, target[, sign, weight]
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from vcell.atlas.sources import strip_ensembl_version
from vcell.errors import VCellError

GRN_COLUMNS = ("source", "target", "sign", "weight")
SIGN_WORDS = {
    **dict.fromkeys(("+", "+1", "1", "activation", "activates", "activate", "activator", "activating", "positive"), 1),
    **dict.fromkeys(("-", "-1", "repression", "represses", "repress", "repressor", "repressing", "inhibition",
                     "inhibits", "negative"), -1),
    **dict.fromkeys(("", "0", "?", "na", "unknown", "unsigned"), 0),
}
# Header names of common GRN resources (DoRothEA/CollecTRI, TRRUST, SCENIC) -> our columns.
GRN_HEADER_NAMES = {
    **dict.fromkeys(("source", "regulator", "tf", "from"), "source"),
    **dict.fromkeys(("target", "gene", "to"), "target"),
    **dict.fromkeys(("sign", "mor", "mode", "effect", "regulation"), "sign"),
    **dict.fromkeys(("weight", "importance", "score", "likelihood"), "weight"),
}
COMPARTMENT_COLUMNS = ("pathway", "compartment")


def read_lines(path: str | Path, what: str) -> list[str]:
    """Lines of a non-empty text file, or a VCellError saying what was expected there."""
    path = Path(path)
    if not path.is_file():
        raise VCellError(f"{what} file not found: {path}", hint="check the path (atlases keep them in annotations/)")
    lines = path.read_text().splitlines()
    if not any(line.strip() for line in lines):
        raise VCellError(f"{path}: the {what} file is empty", hint=f"write at least one {what} line")
    return lines


def read_gmt(path: str | Path) -> dict[str, list[str]]:
    """GMT gene sets: each line `name <TAB> description <TAB> gene <TAB> gene ...`."""
    sets: dict[str, list[str]] = {}
    for number, line in enumerate(read_lines(path, "GMT"), start=1):
        if not line.strip():
            continue
        fields = line.rstrip("\n").split("\t")
        genes = [gene.strip() for gene in fields[2:] if gene.strip()]
        name = fields[0].strip()
        if len(fields) < 3 or not name or not genes:
            raise VCellError(
                f"{path}, line {number}: malformed GMT line (need name, description and at least one gene, "
                f"tab-separated; got {len(fields)} field(s))",
                hint="separate fields with tabs, not spaces; use 'NA' for an empty description",
            )
        if name in sets:
            raise VCellError(
                f"{path}, line {number}: gene set '{name}' appears twice", hint="gene set names must be unique"
            )
        sets[name] = genes
    return sets


def write_gmt(
    path: str | Path, sets: Mapping[str, Sequence[str]], descriptions: Mapping[str, str] | None = None
) -> None:
    """Write gene sets as GMT; a missing description is written as 'NA'."""
    lines = []
    for name, genes in sets.items():
        if "\t" in name or not len(genes):
            problem = "its name holds a tab" if "\t" in name else "it has no genes"
            raise VCellError(f"gene set '{name}' cannot be written to {path}: {problem}", hint="names need no tabs and sets need genes")
        description = (descriptions or {}).get(name, "NA")
        lines.append("\t".join([name, description, *map(str, genes)]))
    Path(path).write_text("\n".join(lines) + "\n")


def read_table(path: str | Path, required_columns: Sequence[str]) -> pd.DataFrame:
    """A tab-separated table with a header holding `required_columns`; string values, index = line numbers."""
    lines = read_lines(path, "table")
    header = lines[0].rstrip("\n").split("\t")
    missing = [column for column in required_columns if column not in header]
    if missing:
        raise VCellError(
            f"{path}, line 1: header lacks column(s) {missing} (found {header})",
            hint=f"the first line must name the columns, tab-separated: {chr(9).join(required_columns)}",
        )
    rows, numbers = [], []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.rstrip("\n").split("\t")
        if len(fields) != len(header):
            raise VCellError(
                f"{path}, line {number}: {len(fields)} field(s), the header has {len(header)}",
                hint="separate fields with tabs and give every column a value",
            )
        rows.append(fields)
        numbers.append(number)
    return pd.DataFrame(rows, columns=header, index=pd.Index(numbers, name="line"), dtype=object)


def read_grn_edges(path: str | Path) -> pd.DataFrame:
    """GRN edges as people write them: `source, target[, sign, weight]`, one edge a line.

    Tab- or comma-separated, with or without a header line. A header names its columns in any
    order (common names such as tf/regulator, gene, mor/mode are understood); without one the
    columns are source, target, sign, weight. A sign is +/-, 1/-1, activation/repression (and
    related words, any case) or unknown; a missing sign is 0 (unknown), a missing weight NaN.
    Returns columns source, target, sign (int8), weight (float), indexed by line number.
    """
    lines = read_lines(path, "GRN edge")
    numbered = [(n, line) for n, line in enumerate(lines, start=1) if line.strip() and not line.startswith("#")]
    if not numbered:
        raise VCellError(f"{path}: the GRN edge file holds only comments", hint="write one edge per line: source, target[, sign, weight]")
    separator = "\t" if "\t" in numbered[0][1] else ","
    rows = [(n, [field.strip() for field in next(csv.reader([line], delimiter=separator))]) for n, line in numbered]
    columns = grn_header(path, rows[0][1])
    if columns is not None:
        rows = rows[1:]
    edges = [grn_edge(path, number, fields, columns) for number, fields in rows]
    table = pd.DataFrame(edges, columns=list(GRN_COLUMNS), index=pd.Index([n for n, _ in rows], name="line"))
    table[["source", "target"]] = table[["source", "target"]].astype(object)
    return table.astype({"sign": np.int8, "weight": float})


def grn_header(path: str | Path, fields: list[str]) -> list[str | None] | None:
    """Our column name (or None: ignored) per header field, or None when line 1 is an edge."""
    names = [GRN_HEADER_NAMES.get(field.lower()) for field in fields]
    if names[0] is None and sum(name is not None for name in names) < 2:
        return None
    missing = [column for column in ("source", "target") if column not in names]
    if missing:
        raise VCellError(
            f"{path}: the header line {fields} names no {' or '.join(missing)} column",
            hint="name the columns source, target[, sign, weight], or drop the header line",
        )
    return names


def grn_edge(path: str | Path, number: int, fields: list[str], columns: list[str | None] | None) -> tuple:
    """(source, target, sign, weight) of one line; `columns` from the header, None = positional."""
    if columns is None and not 2 <= len(fields) <= len(GRN_COLUMNS):
        raise VCellError(
            f"{path}, line {number}: {len(fields)} field(s); without a header the columns are source, target[, sign, weight]",
            hint="separate fields with tabs or commas, or add a header line naming the columns",
        )
    if columns is not None and len(fields) != len(columns):
        raise VCellError(
            f"{path}, line {number}: {len(fields)} field(s), the header has {len(columns)}",
            hint="separate fields with tabs or commas and give every column a value",
        )
    values = dict(zip(columns or GRN_COLUMNS, fields))
    if not values.get("source") or not values.get("target"):
        raise VCellError(f"{path}, line {number}: bad edge: empty source or target", hint="give both gene IDs")
    return values["source"], values["target"], parse_sign(path, number, values.get("sign", "")), \
        parse_weight(path, number, values.get("weight", ""))


def parse_sign(path: str | Path, number: int, text: str) -> int:
    sign = SIGN_WORDS.get(text.lower())
    if sign is None and is_number(text) and abs(float(text)) == 1:
        sign = int(float(text))
    if sign is None:
        raise VCellError(
            f"{path}, line {number}: bad edge: unknown sign '{text}'",
            hint="write the sign as +/-, 1/-1, activation/repression or unknown "
            "(without a header line the third column is the sign)",
        )
    return sign


def parse_weight(path: str | Path, number: int, text: str) -> float:
    if not text or text.lower() in ("na", "nan"):
        return float("nan")
    if not is_number(text) or float(text) < 0:
        raise VCellError(
            f"{path}, line {number}: bad edge: weight '{text}' is not a non-negative number",
            hint="write the weight as a number >= 0, or leave it out",
        )
    return float(text)


def write_grn_edges(
    path: str | Path, source: Sequence[str], target: Sequence[str], sign: Sequence[int], weight: Sequence[float]
) -> None:
    """Write GRN edges (gene IDs, sign +1/-1, non-negative weight) as a TSV with a header."""
    table = pd.DataFrame({"source": source, "target": target, "sign": np.asarray(sign, dtype=int), "weight": weight})
    table.to_csv(path, sep="\t", index=False, float_format="%.6g")


def read_pathway_compartments(path: str | Path) -> dict[str, str]:
    """{pathway: compartment}; each pathway appears once."""
    table = read_table(path, COMPARTMENT_COLUMNS)
    duplicated = table["pathway"][table["pathway"].duplicated()]
    if len(duplicated):
        line = int(duplicated.index[0])
        raise VCellError(
            f"{path}, line {line}: pathway '{duplicated.iloc[0]}' listed twice", hint="give each pathway one compartment"
        )
    return dict(zip(table["pathway"], table["compartment"]))


def write_pathway_compartments(path: str | Path, compartments: Mapping[str, str]) -> None:
    table = pd.DataFrame({"pathway": list(compartments), "compartment": list(compartments.values())})
    table.to_csv(path, sep="\t", index=False)


def align_to_vocabulary(
    sets: Mapping[str, Sequence[str]], gene_ids: Sequence[str], *, strict: bool = False, source: str = "gene sets"
) -> tuple[np.ndarray, dict[str, dict[str, int]]]:
    """(mask (n_sets, n_genes) bool, {set: {'matched': n, 'missing': n}}) against the vocabulary.

    Ensembl versions are ignored on both sides. With `strict`, any gene ID not in the
    vocabulary is an error naming the set and a few of the IDs.
    """
    vocabulary = pd.Index([strip_ensembl_version(str(gene)) for gene in gene_ids])
    mask = np.zeros((len(sets), len(vocabulary)), dtype=bool)
    coverage: dict[str, dict[str, int]] = {}
    for row, (name, genes) in enumerate(sets.items()):
        positions = vocabulary.get_indexer([strip_ensembl_version(str(gene)) for gene in genes])
        unknown = [gene for gene, position in zip(genes, positions) if position < 0]
        if strict and unknown:
            raise VCellError(
                f"{source}: set '{name}' has {len(unknown)} gene ID(s) not in the vocabulary, e.g. {unknown[:5]}",
                hint="use the atlas's gene IDs (var index), or pass strict=False to drop unknown genes",
            )
        mask[row, positions[positions >= 0]] = True
        coverage[name] = {"matched": int((positions >= 0).sum()), "missing": len(unknown)}
    return mask, coverage


def is_number(text: str) -> bool:
    try:
        return np.isfinite(float(text))
    except ValueError:
        return False
