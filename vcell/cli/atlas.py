"""`vcell atlas synth | build | info | validate`: simulate, build, inspect and check atlases.

    vcell atlas synth [--out PATH] [--cells N] [--genes G] [--seed S] [k=v ...]
    vcell atlas build IN [IN ...] --out PATH [--layer L] [--gene-key K] [k=v ...]
    vcell atlas info PATH [--json]
    vcell atlas validate PATH [--skip-stats]
"""

from __future__ import annotations

import argparse
import json

from vcell.cli.arguments import add_config_arguments, flag, non_negative_int, positive_int, resolve_config


def run_synth(args: argparse.Namespace) -> None:
    from vcell.atlas.ensure import ensure_synthetic_atlas
    from vcell.atlas.synth import synthesize_atlas

    config = resolve_config(
        args,
        flag("data.atlas", args.out) + flag("data.synth.cells", args.cells) + flag("data.synth.genes", args.genes)
        + flag("data.synth.seed", args.seed) + flag("build.overwrite", args.overwrite or None),
    )
    if args.reuse:
        path = ensure_synthetic_atlas(config.data, config.build, progress=not args.quiet)
    else:
        path = synthesize_atlas(config.data.atlas, config.data.synth, config.build, progress=not args.quiet)
    print_info(path)


def run_build(args: argparse.Namespace) -> None:
    from vcell.atlas.anndata_source import AnnDataSource
    from vcell.atlas.build import build_atlas

    matrix = f"layers/{args.layer}" if args.layer else args.matrix
    config = resolve_config(
        args,
        flag("build.matrix", matrix) + flag("build.gene_key", args.gene_key) + flag("build.values", args.values)
        + flag("build.overwrite", args.overwrite or None),
    )
    sources = [AnnDataSource(path, config.build.matrix, config.build.gene_key) for path in args.inputs]
    path = build_atlas(sources, args.out, config.build, progress=not args.quiet)
    print_info(path)


def print_info(path, as_json: bool = False) -> None:
    from vcell.atlas.summary import format_info
    from vcell.atlas.store import atlas_info

    info = atlas_info(path)
    print(json.dumps(info, indent=2) if as_json else format_info(info))


def run_info(args: argparse.Namespace) -> None:
    print_info(args.path, args.json)


def run_validate(args: argparse.Namespace) -> None:
    from vcell.atlas.validate import validate_atlas

    summary = validate_atlas(args.path, check_statistics=not args.skip_stats, progress=not args.quiet)
    print(json.dumps(summary) if args.json else f"valid: {summary['path']} ({summary['n_cells']:,} cells x "
          f"{summary['n_genes']:,} genes in {summary['n_shards']} shard(s))")


def add_atlas_parser(commands) -> None:
    atlas = commands.add_parser("atlas", help="build, simulate, inspect and validate atlases")
    atlas_commands = atlas.add_subparsers(dest="atlas_command", required=True, metavar="ATLAS_COMMAND")

    synth = atlas_commands.add_parser("synth", help="simulate an atlas with known ground truth")
    synth.add_argument("--out", help="output atlas path (default: data.atlas of the config)")
    synth.add_argument("--cells", type=positive_int, help="number of cells (data.synth.cells)")
    synth.add_argument("--genes", type=positive_int, help="number of genes (data.synth.genes)")
    synth.add_argument("--seed", type=non_negative_int, help="simulator seed (data.synth.seed)")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing atlas")
    synth.add_argument("--reuse", action="store_true", help="keep an existing atlas made with the same settings")
    synth.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    add_config_arguments(synth)
    synth.set_defaults(handler=run_synth)

    build = atlas_commands.add_parser("build", help="turn .h5ad / AnnData .zarr files into an atlas")
    build.add_argument("inputs", nargs="+", metavar="INPUT", help="input files (and key=value overrides)")
    build.add_argument("--out", required=True, help="output atlas path")
    build.add_argument("--layer", help="use layers/LAYER instead of X")
    build.add_argument("--matrix", help="'X', 'raw.X' or 'layers/<name>' (build.matrix)")
    build.add_argument("--gene-key", help="var column with gene IDs, or 'index' (build.gene_key)")
    build.add_argument("--values", choices=["auto", "counts", "normalized"], help="what X holds (build.values)")
    build.add_argument("--overwrite", action="store_true", help="replace an existing atlas")
    add_config_arguments(build)
    build.set_defaults(handler=run_build)

    info = atlas_commands.add_parser("info", help="cells, genes, shards, sources, size on disk")
    info.add_argument("path")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(handler=run_info)

    validate = atlas_commands.add_parser("validate", help="check shapes, indices, checksums, vocabulary, stats")
    validate.add_argument("path")
    validate.add_argument("--skip-stats", action="store_true", help="skip recomputing the statistics")
    validate.add_argument("--json", action="store_true", help="machine-readable output")
    validate.add_argument("--quiet", action="store_true", help="no progress bars")
    validate.set_defaults(handler=run_validate)
