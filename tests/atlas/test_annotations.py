"""Plain-file annotations: round trips, alignment to a vocabulary, and every bad-input error."""

from __future__ import annotations

import numpy as np
import pytest

from vcell.atlas.annotations import (
    align_to_vocabulary,
    read_gmt,
    read_grn_edges,
    read_pathway_compartments,
    read_table,
    write_gmt,
    write_grn_edges,
    write_pathway_compartments,
)
from vcell.errors import VCellError

SETS = {"GLYCOLYSIS": ["ENSG00000000001", "ENSG00000000002"], "OXPHOS": ["ENSG00000000003"]}


def test_gmt_round_trip_keeps_order_and_descriptions(tmp_path):
    path = tmp_path / "sets.gmt"
    write_gmt(path, SETS, {"GLYCOLYSIS": "sugar to pyruvate"})
    assert read_gmt(path) == SETS
    assert path.read_text().splitlines()[1] == "OXPHOS\tNA\tENSG00000000003"
    assert path.read_text().splitlines()[0].split("\t")[1] == "sugar to pyruvate"


def test_tsv_round_trips(tmp_path):
    edges = tmp_path / "grn_edges.tsv"
    write_grn_edges(edges, ["TF1", "TF1"], ["G1", "G2"], [1, -1], [0.5, 1.25])
    table = read_grn_edges(edges)
    assert table["source"].tolist() == ["TF1", "TF1"] and table["sign"].tolist() == [1, -1]
    assert table["weight"].tolist() == [0.5, 1.25] and table["sign"].dtype == np.int8
    assert table.index.tolist() == [2, 3]  # line numbers, for later error messages
    compartments = tmp_path / "pathway_compartments.tsv"
    write_pathway_compartments(compartments, {"GLYCOLYSIS": "cytosol", "OXPHOS": "mitochondrion"})
    assert compartments.read_text().splitlines()[0] == "pathway\tcompartment"
    assert read_pathway_compartments(compartments) == {"GLYCOLYSIS": "cytosol", "OXPHOS": "mitochondrion"}


def test_align_reports_coverage_and_ignores_ensembl_versions():
    vocabulary = ["ENSG00000000001", "ENSG00000000002.5", "ENSG00000000009"]
    sets = {**SETS, "MIXED": ["ENSG00000000001.3", "ENSG00000000404"]}
    mask, coverage = align_to_vocabulary(sets, vocabulary)
    assert mask.shape == (3, 3) and mask.dtype == bool
    assert mask.tolist() == [[True, True, False], [False, False, False], [True, False, False]]
    assert coverage == {
        "GLYCOLYSIS": {"matched": 2, "missing": 0},
        "OXPHOS": {"matched": 0, "missing": 1},
        "MIXED": {"matched": 1, "missing": 1},
    }
    with pytest.raises(VCellError, match=r"pathways\.gmt: set 'OXPHOS' has 1 gene ID\(s\) not in the vocabulary"):
        align_to_vocabulary(sets, vocabulary, strict=True, source="pathways.gmt")


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("", r"empty"),
        ("\n  \n", r"empty"),
        ("SET1\tNA\tG1\nSET2 NA G2 G3\n", r"line 2: malformed GMT line.*1 field"),
        ("SET1\tNA\n", r"line 1: malformed GMT line"),
        ("SET1\tNA\tG1\nSET1\tNA\tG2\n", r"line 2: gene set 'SET1' appears twice"),
    ],
)
def test_bad_gmt_names_file_line_and_fix(tmp_path, text, pattern):
    path = write(tmp_path, "bad.gmt", text)
    with pytest.raises(VCellError, match=pattern) as error:
        read_gmt(path)
    assert str(path) in str(error.value) and "hint:" in str(error.value)


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(VCellError, match=r"GMT file not found: .*nowhere\.gmt"):
        read_gmt(tmp_path / "nowhere.gmt")
    with pytest.raises(VCellError, match=r"GRN edge file not found"):
        read_grn_edges(tmp_path / "nowhere.tsv")


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("source\tweight\nA\t1\n", r"header line \['source', 'weight'\] names no target column"),
        ("source\ttarget\tsign\tweight\nA\tB\t1\t0.5\nA\tC\t1\n", r"line 3: 3 field\(s\), the header has 4"),
        ("source\ttarget\tsign\tweight\nA\tB\t1\t0.5\n\nA\tC\t2\t0.5\n", r"line 4: bad edge: unknown sign '2'"),
        ("source\ttarget\tsign\tweight\nA\tB\t-1\tstrong\n", r"line 2: bad edge: weight 'strong'"),
        ("source\ttarget\tsign\tweight\nA\tB\t-1\t-0.5\n", r"line 2: bad edge"),
        ("A\tB\tactivation\nA\tC\tmaybe\n", r"line 2: bad edge: unknown sign 'maybe'"),
        ("A\tB\t+\t1\tx\n", r"line 1: 5 field\(s\); without a header"),
        ("A B +\n", r"line 1: 1 field\(s\)"),
        ("", r"empty"),
    ],
)
def test_bad_grn_table_names_file_line_and_fix(tmp_path, text, pattern):
    path = write(tmp_path, "grn_edges.tsv", text)
    with pytest.raises(VCellError, match=pattern) as error:
        read_grn_edges(path)
    assert str(path) in str(error.value) and "hint:" in str(error.value)


def test_bad_compartment_table(tmp_path):
    path = write(tmp_path, "c.tsv", "pathway\tcompartment\nP1\tnucleus\nP1\tcytosol\n")
    with pytest.raises(VCellError, match=r"line 3: pathway 'P1' listed twice"):
        read_pathway_compartments(path)
    path = write(tmp_path, "d.tsv", "pathway compartment\nP1 nucleus\n")
    with pytest.raises(VCellError, match=r"header lacks column"):
        read_pathway_compartments(path)


def test_read_table_keeps_extra_columns(tmp_path):
    path = write(tmp_path, "t.tsv", "pathway\tcompartment\tnote\nP1\tnucleus\tx\n")
    table = read_table(path, ["pathway"])
    assert table.columns.tolist() == ["pathway", "compartment", "note"] and table.loc[2, "note"] == "x"


def test_unwritable_sets_are_refused(tmp_path):
    with pytest.raises(VCellError, match="cannot be written"):
        write_gmt(tmp_path / "x.gmt", {"EMPTY": []})


@pytest.mark.parametrize(
    "text",
    [
        "source\ttarget\nTF1\tG1\nTF1\tG2\nTF2\tG1\n",  # two columns, header
        "TF1\tG1\nTF1\tG2\nTF2\tG1\n",  # two columns, no header
        "TF1,G1,+\nTF1,G2,-\nTF2,G1,+\n",  # CSV, +/-
        "tf\ttarget\tmor\nTF1\tG1\t1\nTF1\tG2\t-1\nTF2\tG1\t1\n",  # DoRothEA-style header
        "TF1\tG1\tActivation\nTF1\tG2\tRepression\nTF2\tG1\tactivates\n",  # TRRUST-style words
        "weight,target,source,sign\n0.5,G1,TF1,ACTIVATION\n1,G2,TF1,represses\n2,G1,TF2,+1\n",  # any order
    ],
)
def test_grn_edges_accept_what_the_field_writes(tmp_path, text):
    table = read_grn_edges(write(tmp_path, "edges.txt", text))
    assert table["source"].tolist() == ["TF1", "TF1", "TF2"] and table["target"].tolist() == ["G1", "G2", "G1"]
    assert table["sign"].dtype == np.int8 and table["weight"].dtype == float
    if "-" in text or "epress" in text:
        assert table["sign"].tolist() == [1, -1, 1]
    else:
        assert table["sign"].tolist() == [0, 0, 0]  # not given: unknown, never a guessed +1
        assert table["weight"].isna().all()


def test_grn_edges_unknown_sign_and_missing_weight(tmp_path):
    table = read_grn_edges(write(tmp_path, "e.tsv", "source\ttarget\tsign\tweight\nA\tB\tUnknown\t\nA\tC\t-\t0.25\n"))
    assert table["sign"].tolist() == [0, -1] and np.isnan(table.loc[2, "weight"]) and table.loc[3, "weight"] == 0.25
