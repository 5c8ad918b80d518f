"""The commands on a trained model (a run or an export folder): export, embed, evaluate, predict.

    vcell export RUN --out DIR [--overwrite]
    vcell embed RUN [--input ATLAS_OR_H5AD] --out FILE.h5ad [--batch-size N] [--tasks N] [--layer L] [--gene-key K]
                [--min-gene-overlap F] [--expression denoised|imputed ...]
    vcell evaluate RUN [--atlas PATH] [--max-cells N] [--no-plots] [--embeddings all|held_out|none]
                   [--expression denoised|imputed ...]
    vcell predict RUN --cell-type T [--perturbation GENE] [--time H] [--hours-since-pulse H] --out FILE.h5ad
"""

from __future__ import annotations

import argparse
import json

from vcell.cli.arguments import fraction, non_negative_hours, non_negative_int, positive_int, whole_number

# the names of vcell.evaluate.embed.EXPRESSION_LAYERS (not imported here: it loads torch; a test checks)
EXPRESSION_CHOICES = ["denoised", "imputed"]
EXPRESSION_HELP = ("also write each cell's expression as layers['vcell_NAME'] (cells x genes float32; repeat for "
                   "both): denoised = free of counting noise and of the batch's offset; imputed = each gene's value "
                   "were it detected (fills dropouts)")


def run_export(args: argparse.Namespace) -> None:
    from vcell.evaluate.export import MODEL_FILES, export_run

    out = export_run(args.run, args.out, overwrite=args.overwrite)
    biology = sorted(path.name for path in (out / "biology").glob("*.tsv"))
    print(f"exported {args.run} to {out}/ ({', '.join(MODEL_FILES)}, MODEL_CARD.md"
          + (f", biology/: {', '.join(biology)}" if biology else "") + ")")


def run_embed(args: argparse.Namespace) -> None:
    from vcell.evaluate.embed import embed_run

    out = embed_run(args.run, args.input, args.out, batch_size=args.batch_size, layer=args.layer,
                    gene_key=args.gene_key, overwrite=args.overwrite, progress=not args.quiet, tasks=args.tasks,
                    address=args.address, expression=args.expression or (),
                    **({} if args.min_gene_overlap is None else {"min_gene_overlap": args.min_gene_overlap}))
    layers = "".join(f", layers['vcell_{name}']" for name in dict.fromkeys(args.expression or ()))
    print(f"wrote {out} (obsm['X_vcell'] and the model's per-cell statistics{layers}; see uns['vcell'])")


def run_evaluate(args: argparse.Namespace) -> None:
    from vcell.evaluate.evaluation import evaluate_run, summary_lines

    overrides = {key: value for key, value in (("max_cells", args.max_cells), ("embeddings", args.embeddings),
                                               ("expression", args.expression)) if value is not None}
    if args.no_plots:
        overrides["plots"] = False
    results = evaluate_run(args.run, args.atlas, progress=not args.quiet, overrides=overrides)
    print(json.dumps(results, indent=2, default=str) if args.json else "\n".join(summary_lines(results)))


def run_predict(args: argparse.Namespace) -> None:
    from vcell.evaluate.predict import predict_run

    out = predict_run(args.run, perturbation=args.perturbation, cell_type=args.cell_type, out=args.out, time=args.time,
                      hours_since_pulse=args.hours_since_pulse, cells=args.cells, atlas=args.atlas,
                      overwrite=args.overwrite)
    print(f"wrote {out} (X: predicted expression; layers['control']; var['mean_delta'])")


def add_trained_model_parsers(commands) -> None:
    export = commands.add_parser("export", help="a finished run's model as a folder: safetensors, config, spec, model card, biology/ TSVs")
    export.add_argument("run", help="run folder (runs/<name>) or an export folder")
    export.add_argument("--out", required=True, help="output folder (written whole or not at all)")
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    export.set_defaults(handler=run_export)

    embed = commands.add_parser("embed", help="embeddings and per-cell statistics of any atlas or .h5ad, as AnnData")
    embed.add_argument("run", help="run folder or export folder")
    embed.add_argument("--input", help="atlas or .h5ad to embed (default: the run's training atlas)")
    embed.add_argument("--out", required=True, help="output .h5ad")
    embed.add_argument("--batch-size", type=positive_int, default=1024, help="cells per batch (memory; results do not change)")
    embed.add_argument("--layer", help=".h5ad input: use layers/LAYER (raw counts) instead of X")
    embed.add_argument("--gene-key", help=".h5ad input: var column with gene IDs or symbols (default: the index)")
    embed.add_argument("--tasks", "--workers", dest="tasks", type=non_negative_int, default=0,
                       help="Ray tasks embedding spans of cells in parallel (large inputs); --workers: its old name")
    embed.add_argument("--address", help="Ray cluster for --tasks ('auto' or host:port; default: a local one)")
    embed.add_argument("--min-gene-overlap", type=fraction,
                       help="refuse an input with fewer than this share of the model's genes (default 0.5); the "
                       "model's genes it lacks are read as unmeasured, its other genes are ignored")
    embed.add_argument("--expression", action="append", choices=EXPRESSION_CHOICES, help=EXPRESSION_HELP)
    embed.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    embed.add_argument("--quiet", action="store_true", help="no progress bar")
    embed.set_defaults(handler=run_embed)

    evaluate = commands.add_parser("evaluate", help="metrics vs baselines, plots and embeddings of a finished run")
    evaluate.add_argument("run", help="run folder (writes its metrics.json, plots/, embeddings.h5ad)")
    evaluate.add_argument("--atlas", help="score on this atlas instead of the run's held-out cells")
    evaluate.add_argument("--max-cells", type=whole_number(100), help="held-out cells scored (evaluate.max_cells, >= 100)")
    evaluate.add_argument("--embeddings", choices=["all", "held_out", "none"], help="cells in embeddings.h5ad")
    evaluate.add_argument("--expression", action="append", choices=EXPRESSION_CHOICES,
                          help=EXPRESSION_HELP.replace("layers[", "embeddings.h5ad's layers[") + " (evaluate.expression)")
    evaluate.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    evaluate.add_argument("--json", action="store_true", help="print the whole evaluation section as JSON")
    evaluate.add_argument("--quiet", action="store_true", help="no progress messages")
    evaluate.set_defaults(handler=run_evaluate)

    predict = commands.add_parser("predict", help="predicted expression of real cells under a perturbation / stimulus")
    predict.add_argument("run", help="run folder or export folder")
    predict.add_argument("--cell-type", required=True, help="cell type the basal cells are drawn from")
    predict.add_argument("--perturbation", help="perturbation category (e.g. a gene symbol); default: control")
    predict.add_argument("--time", type=non_negative_hours, default=0.0, help="hours since a stimulus (0 = unstimulated)")
    predict.add_argument("--hours-since-pulse", type=non_negative_hours, help="hours since an earlier pulse (default: naive)")
    predict.add_argument("--cells", type=positive_int, default=500, help="basal cells to start from (a seeded sample)")
    predict.add_argument("--atlas", help="atlas with the basal cells (default: the run's training atlas)")
    predict.add_argument("--out", required=True, help="output .h5ad")
    predict.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    predict.set_defaults(handler=run_predict)
