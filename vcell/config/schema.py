"""The one typed, strict configuration tree every command reads.

Every section is a pydantic model that forbids unknown keys; each field's description is its
documentation (and shows in `--print-config --explain`). Cross-field checks live here, next to
the fields they relate, so an impossible combination fails before any work starts.
Later components (loader, model, training, tuning) add their own sections to `VCellConfig`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from vcell.config.evaluate import EvaluateConfig
from vcell.config.model import ModelConfig
from vcell.config.section import Section
from vcell.config.train import ScalingSection, TrainConfig, WandbConfig
from vcell.config.tune import TuneSection


class CodecConfig(Section):
    """Compression of the atlas's X arrays."""

    name: Literal["blosc-lz4", "blosc-zstd", "zstd", "none"] = Field(
        "blosc-lz4", description="blosc-lz4 decodes ~3x faster than zstd here; zstd is smaller"
    )
    level: int = Field(3, ge=0, le=9, description="compression level (blosc 0-9)")
    shuffle: Literal["byte", "bit", "none"] = Field("byte", description="blosc shuffle filter")


class BuildConfig(Section):
    """How AnnData inputs (or the simulator) become an atlas (`vcell atlas build`)."""

    matrix: str = Field(
        "auto",
        description="which matrix holds expression: 'X', 'raw.X', 'layers/<name>', or 'auto': X, but refused "
        "when X is scaled or normalised while raw.X or a layer holds counts (the error names the option)",
    )
    gene_key: str | None = Field(
        None, description="var column with gene IDs ('index' = var_names); None prefers Ensembl IDs"
    )
    values: Literal["auto", "counts", "normalized"] = Field(
        "auto",
        description="what the matrix holds: 'auto' detects raw counts (non-negative integers); "
        "'counts' refuses anything else",
    )
    dtype: Literal["auto", "uint16", "float32", "float64"] = Field(
        "auto",
        description="stored value type of X: 'auto' stores counts below 65,536 as uint16 (a third less "
        "to read and decode than float32 + uint16 indices) and anything else as float32",
    )
    duration_columns: list[str] = Field(
        default_factory=lambda: ["time", "hours_since_pulse"],
        description="obs columns the models read as hours (model.columns.time/history): text such as '4h', "
        "'30min', '2d' (or numbers stored as categories) is converted to hours; other text is an error",
    )
    codec: CodecConfig = Field(default_factory=CodecConfig)
    chunk_nnz: int = Field(
        65536, ge=1024, description="target non-zeros per inner chunk (~64k-128k read fastest)"
    )
    shard_bytes: int = Field(
        1_000_000_000, ge=1 << 16, description="target uncompressed bytes of X per shard (~1 GB)"
    )
    shard_cells: int | None = Field(
        None, ge=1, description="cells per shard; overrides shard_bytes when set (tests, tuning)"
    )
    read_cells: int = Field(8192, ge=1, description="cells read from an input at a time")
    shuffle_seed: int = Field(0, ge=0, description="seed of the cell pre-shuffle across sources")
    shuffle: bool = Field(True, description="pre-shuffle cells across sources (off keeps input order)")
    overwrite: bool = Field(False, description="replace an existing atlas at the output path")


# The demo atlas's biology at 2,000 genes; with fewer genes each count scales down with them.
DEMO_GENES = 2000
DEMO_SIZES = {"transcription_factors": 100, "pathways": 40, "compartments": 6, "perturbations": 50}
MIN_TRANSCRIPTION_FACTORS = 4  # masters plus two regulated layers


def n_master_tfs(transcription_factors: int) -> int:
    """The simulator's master TFs (about a fifth of the TFs): their on/off states are the cell types."""
    return max(1, round(0.2 * transcription_factors))


def min_transcription_factors(cell_types: int) -> int:
    """Fewest TFs whose masters have a distinct on/off pattern for every cell type."""
    tfs = MIN_TRANSCRIPTION_FACTORS
    while 2 ** n_master_tfs(tfs) < cell_types:
        tfs += 1
    return tfs


def scaled_synth_sizes(genes: int, cell_types: int, given: dict) -> dict:
    """Counts of the simulated biology not in `given`, scaled from the demo's by genes / 2,000.

    Larger atlases keep the demo's counts; no count goes below what the simulator needs.
    """
    def scaled(key: str, floor: int) -> int:
        return given[key] if key in given else min(DEMO_SIZES[key], max(floor, round(DEMO_SIZES[key] * genes / DEMO_GENES)))

    sizes = {"transcription_factors": scaled("transcription_factors", min_transcription_factors(cell_types))}
    sizes["pathways"] = scaled("pathways", 1)
    sizes["compartments"] = given.get("compartments", min(DEMO_SIZES["compartments"], sizes["pathways"]))
    sizes["perturbations"] = scaled("perturbations", 1)
    return sizes


class SynthConfig(Section):
    """The ground-truth simulator (`vcell atlas synth`); every default makes the demo atlas.

    transcription_factors, pathways, compartments and perturbations left out scale with
    `genes` (the demo's 100, 40, 6 and 50 at 2,000 genes and above).
    """

    cells: int = Field(20000, ge=1, description="number of cells")
    genes: int = Field(
        DEMO_GENES, ge=MIN_TRANSCRIPTION_FACTORS + 1,
        description="number of genes (transcription factors included); at least one more than the TFs",
    )
    seed: int = Field(0, ge=0, description="same seed, same atlas")
    cell_types: int = Field(6, ge=1, description="distinct regulatory states")
    transcription_factors: int = Field(
        100, ge=MIN_TRANSCRIPTION_FACTORS, description="regulators in the GRN (default: genes / 20, at most 100)"
    )
    pathways: int = Field(40, ge=1, description="gene sets (default: genes / 50, at most 40)")
    compartments: int = Field(6, ge=1, description="cellular compartments grouping pathways (default: 6, at most pathways)")
    perturbations: int = Field(50, ge=0, description="single-gene perturbation targets (default: genes / 40, at most 50)")
    batches: int = Field(3, ge=1, description="datasets/batches with technical effects")
    fraction_perturbed: float = Field(0.5, ge=0.0, le=1.0, description="cells with a perturbation")
    fraction_stimulated: float = Field(0.4, ge=0.0, le=1.0, description="cells in the time course")
    fraction_primed: float = Field(0.2, ge=0.0, le=1.0, description="cells with an earlier pulse")
    time_points: list[float] = Field(
        default_factory=lambda: [0.5, 1.0, 2.0, 4.0, 8.0, 16.0],
        description="hours after stimulus sampled in the time course",
    )
    mean_library_size: float = Field(2000.0, gt=0, description="mean UMIs per cell (~7% of 2,000 genes detected)")
    extrinsic_noise: float = Field(0.25, ge=0.0, description="sd of log cell size (extrinsic noise)")
    chunk_cells: int = Field(
        4096,
        ge=1,
        description="cells simulated at a time: bounds memory (~0.1 GB per 1000 genes) and defines "
        "the random streams, so changing it changes the cells",
    )
    truth_draws: int = Field(
        256, ge=8, description="simulated cells per condition behind each true expected profile"
    )

    @model_validator(mode="before")
    @classmethod
    def _scale_with_genes(cls, data: object) -> object:
        """Fill the biology counts the user left out from the gene count (field checks come after)."""
        if not isinstance(data, dict):
            return data
        genes, cell_types = data.get("genes", DEMO_GENES), data.get("cell_types", 6)
        if not isinstance(genes, int) or not isinstance(cell_types, int) or genes < 1 or cell_types < 1:
            return data  # the field checks report it
        return {**data, **scaled_synth_sizes(genes, cell_types, data)}

    @model_validator(mode="after")
    def _check_sizes(self) -> SynthConfig:
        if self.transcription_factors >= self.genes:
            needed = min_transcription_factors(self.cell_types) + 1
            raise ValueError(
                f"transcription_factors ({self.transcription_factors}) must be < genes ({self.genes}); with "
                f"transcription_factors left to scale, {self.cell_types} cell type(s) need at least {needed} genes "
                f"({needed - 1} transcription factors for distinct master-TF states, plus a target gene)"
            )
        if self.pathways > 2 * self.genes:
            raise ValueError(f"pathways ({self.pathways}) must be <= 2 x genes ({2 * self.genes}): a gene joins at most 2")
        if self.perturbations > self.genes:
            raise ValueError(f"perturbations ({self.perturbations}) must be <= genes ({self.genes})")
        if self.compartments > self.pathways:
            raise ValueError(
                f"compartments ({self.compartments}) must be <= pathways ({self.pathways})"
            )
        if any(t <= 0 for t in self.time_points) or not self.time_points:
            raise ValueError(f"time_points must be a non-empty list of positive hours, got {self.time_points}")
        return self


class DataConfig(Section):
    """Which atlas a job uses, and how to make it when it is missing."""

    atlas: str = Field("data/demo.zarr", description="path of the atlas (a Zarr v3 store)")
    synthesize_if_missing: bool = Field(
        True, description="simulate the demo atlas (data.synth) when it does not exist; only at the demo path "
        "data/demo.zarr: any other missing data.atlas is an error"
    )
    synth: SynthConfig = Field(default_factory=SynthConfig)


class NormalizeConfig(Section):
    """Per-cell normalisation done by the loader (scanpy's order: scale, log1p, z-score, clip)."""

    target_sum: float | None = Field(
        10000.0, gt=0, description="scale each cell to this many counts; null keeps values as stored"
    )
    log1p: bool = Field(True, description="log(1 + x) after scaling")
    zscore: bool = Field(
        False,
        description="standardise each gene with the atlas's stored mean/variance (they are of "
        "log1p(cp10k) for count atlases, so this needs target_sum=10000 and log1p=true)",
    )
    clip: float | None = Field(None, gt=0, description="clip z-scores to +-clip (scanpy's max_value)")


class GenesConfig(Section):
    """Which genes the batches carry (library size is always over all genes)."""

    select: Literal["all", "highly_variable", "list"] = Field(
        "all", description="'highly_variable': the n_top genes of highest stored variance; 'list': names/file"
    )
    n_top: int = Field(2000, ge=1, description="how many highly variable genes")
    names: list[str] = Field(default_factory=list, description="gene IDs or symbols, for select=list")
    file: str | None = Field(None, description="a text file with one gene ID or symbol per line, for select=list")

    @model_validator(mode="after")
    def _check_list(self) -> GenesConfig:
        if self.select == "list" and not (self.names or self.file):
            raise ValueError("genes.select=list needs genes.names or genes.file")
        if self.select != "list" and (self.names or self.file):
            raise ValueError("genes.names/genes.file are only used with genes.select=list")
        return self


class HoldoutConfig(Section):
    """Whole groups of cells held out, e.g. perturbations never seen in training."""

    column: str = Field(description="obs column whose values define the groups")
    val: list[str | float] = Field(default_factory=list, description="groups that form the validation split")
    test: list[str | float] = Field(default_factory=list, description="groups that form the test split")


class SplitConfig(Section):
    """Train/validation/test assignment of cells: held-out groups first, then a seeded fraction."""

    seed: int = Field(0, ge=0, description="seed of the random part of the split")
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0, description="fraction of the other cells for validation")
    test_fraction: float = Field(0.05, ge=0.0, lt=1.0, description="fraction of the other cells for test")
    holdout: list[HoldoutConfig] = Field(default_factory=list, description="held-out groups, by column")

    @model_validator(mode="after")
    def _check_fractions(self) -> SplitConfig:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction must be < 1 (got {self.val_fraction} + {self.test_fraction}): "
                "nothing would be left to train on"
            )
        return self


class LoaderConfig(Section):
    """The streaming loader: blocks, shuffle buffer, ranks, normalisation, labels, splits."""

    batch_size: int = Field(256, ge=1, description="cells per batch on each rank")
    block_cells: int = Field(
        2048, ge=1,
        description="contiguous atlas rows read together (the unit of shuffling; the atlas is pre-shuffled, "
        "so larger blocks cost little randomness and decode less waste)",
    )
    buffer_cells: int = Field(
        16384, ge=1,
        description="shuffle buffer: cells mixed together before being cut into batches "
        "(rounded down to whole batches, at least one); memory grows with it",
    )
    remainder: Literal["pad", "drop"] = Field(
        "pad",
        description="the epoch's last cells: 'pad' tops up every rank's last batch with repeats "
        "flagged valid=false (every cell seen exactly once); 'drop' skips them",
    )
    labels: list[str] = Field(
        default_factory=list, description="obs columns put in each batch (categories as global codes)"
    )
    sparse: bool = Field(False, description="expression as a sparse CSR tensor instead of dense float32 (not with "
                         "normalize.zscore: a z-scored zero is not 0)")
    keep_counts: bool = Field(False, description="also put raw counts in each batch (count likelihoods)")
    threads: int | Literal["auto"] = Field(
        "auto",
        description="background threads reading windows and assembling batches in the training process; "
        "0 does everything in the consuming thread. 'auto': 1 when this process has at least 2 cores to "
        "itself (cores / LOCAL_WORLD_SIZE), else 0 (the work is memory-bound: extra threads only contend)",
    )
    processes: int = Field(
        0, ge=0,
        description="DataLoader worker processes (each decodes every window; threads are cheaper)",
    )
    prefetch_batches: int = Field(2, ge=1, description="batches assembled ahead of the consumer")
    normalize: NormalizeConfig = Field(default_factory=NormalizeConfig)
    genes: GenesConfig = Field(default_factory=GenesConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        # `workers` meant three things (DataLoader processes, Ray Train workers, embed tasks): the
        # loader's is now `processes`; an old config fails naming the new key rather than silently.
        if isinstance(data, dict) and "workers" in data:
            raise ValueError("loader.workers is now loader.processes (DataLoader worker processes; "
                             "scaling.workers stays the number of Ray Train workers): rename the key")
        return data

    @model_validator(mode="after")
    def _check_buffer(self) -> LoaderConfig:
        if isinstance(self.threads, int) and self.threads < 0:
            raise ValueError(f"threads must be >= 0 or 'auto', got {self.threads}")
        if self.buffer_cells < self.batch_size:
            raise ValueError(
                f"buffer_cells ({self.buffer_cells}) must be >= batch_size ({self.batch_size}): "
                "a batch is drawn from one buffer"
            )
        if self.normalize.clip is not None and not self.normalize.zscore:
            raise ValueError("normalize.clip clips z-scores: it needs normalize.zscore=true")
        if self.sparse and self.normalize.zscore:  # a sparse batch's unstored entries read as 0
            raise ValueError("loader.sparse=true with normalize.zscore=true: a z-scored zero count is the gene's "
                             "-mean/sd, not 0, so the batch has no zeros to leave out; set loader.sparse=false "
                             "(or normalize.zscore=false)")
        return self


class VCellConfig(Section):
    """The root of the tree: one file resolves to one of these."""

    name: str = Field("quickstart", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="run name")
    seed: int = Field(0, ge=0, description="global seed")
    data: DataConfig = Field(default_factory=DataConfig)
    build: BuildConfig = Field(default_factory=BuildConfig)
    loader: LoaderConfig = Field(default_factory=LoaderConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    scaling: ScalingSection = Field(default_factory=ScalingSection)
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    tune: TuneSection = Field(default_factory=TuneSection)

