"""The simulator at any gene count: the biology scales with the genes, and only sizes that cannot
work are refused, with a message naming the minimum (issue 15, item 2)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from vcell.atlas.annotations import read_gmt, read_grn_edges, read_pathway_compartments
from vcell.atlas.synth import synthesize_atlas
from vcell.atlas.validate import validate_atlas
from vcell.cli import main
from vcell.config.schema import BuildConfig, SynthConfig, min_transcription_factors


@settings(max_examples=6, deadline=None)
@given(genes=st.integers(1, 1500), cell_types=st.integers(1, 12))
@example(genes=500, cell_types=6)  # the sizes of the report: both failed writing pathways.gmt
@example(genes=200, cell_types=6)
@example(genes=13, cell_types=6)  # one below the minimum for 6 types
def test_synth_builds_a_valid_atlas_or_names_the_minimum(genes, cell_types):
    minimum = max(5, min_transcription_factors(cell_types) + 1)
    try:
        config = SynthConfig(cells=40, genes=genes, cell_types=cell_types, chunk_cells=40, truth_draws=8)
    except ValidationError as error:
        message = str(error)
        assert genes < minimum, message
        assert f"at least {minimum} genes" in message or "greater than or equal to 5" in message, message
        assert "np." not in message
        return
    assert genes >= minimum
    with tempfile.TemporaryDirectory() as directory:
        path = synthesize_atlas(Path(directory) / "atlas.zarr", config, BuildConfig(), progress=False)
        summary = validate_atlas(path, progress=False)
        assert summary["n_genes"] == genes and summary["n_cells"] == 40
        sets = read_gmt(path / "annotations" / "pathways.gmt")
        assert len(sets) == config.pathways and all(sets.values())
        assert set(read_pathway_compartments(path / "annotations" / "pathway_compartments.tsv")) == set(sets)
        assert len(read_grn_edges(path / "annotations" / "grn_edges.tsv")) > 0


def test_biology_scales_with_genes_and_keeps_the_demo_and_what_is_given():
    assert SynthConfig().model_dump(include={"transcription_factors", "pathways", "compartments", "perturbations"}) == {
        "transcription_factors": 100, "pathways": 40, "compartments": 6, "perturbations": 50,
    }
    assert SynthConfig(genes=20000).transcription_factors == 100  # large atlases keep the demo's biology
    small = SynthConfig(genes=500)
    assert (small.transcription_factors, small.pathways, small.compartments, small.perturbations) == (25, 10, 6, 12)
    given_explicitly = SynthConfig(genes=500, transcription_factors=40, pathways=3)
    assert (given_explicitly.transcription_factors, given_explicitly.pathways, given_explicitly.compartments) == (40, 3, 3)
    with pytest.raises(ValidationError, match=r"pathways \(30\) must be <= 2 x genes \(20\)"):
        SynthConfig(genes=10, transcription_factors=4, pathways=30)


def test_cli_synth_at_500_genes(tmp_path, capsys):
    out = tmp_path / "small.zarr"
    assert main(["atlas", "synth", "--cells", "200", "--genes", "500", "--out", str(out), "--quiet",
                 "data.synth.truth_draws=8"]) == 0, capsys.readouterr().err
    assert validate_atlas(out, progress=False)["n_genes"] == 500
    assert main(["atlas", "synth", "--cells", "200", "--genes", "3", "--out", str(tmp_path / "tiny.zarr"), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "genes" in error and "5" in error and "Traceback" not in error and not (tmp_path / "tiny.zarr").exists()
