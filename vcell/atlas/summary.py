"""Human-readable summaries of an atlas (the JSON form is `atlas_info` itself)."""

from __future__ import annotations


def human_bytes(n_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n_bytes < 1024 or unit == "TiB":
            return f"{n_bytes:.1f} {unit}" if unit != "B" else f"{int(n_bytes)} B"
        n_bytes /= 1024
    return f"{n_bytes:.1f} TiB"


def format_info(info: dict) -> str:
    """The `vcell atlas info` text: totals, then one line per source with gene coverage."""
    library = info["library_size"]
    codec = info["codec"]
    lines = [
        f"atlas        {info['path']}  ({info['format']})",
        f"cells        {info['n_cells']:,}   genes {info['n_genes']:,}   non-zeros {info['nnz']:,} "
        f"({100 * info['density']:.1f}%)",
        f"values       {info['values']}   library size mean {library['mean']:.0f} "
        f"(median ~{library['median']:.0f}, min {library['min']:.0f}, max {library['max']:.0f})",
        f"shards       {info['n_shards']} x <= {info['cells_per_shard']:,} cells   codec {codec['name']} "
        f"level {codec['level']} ({codec['shuffle']}-shuffle)   ~{info['chunk_nnz']:,} non-zeros per chunk",
        f"size         {human_bytes(info['bytes_on_disk'])} on disk",
        f"obs columns  {', '.join(f'{k} ({v})' for k, v in info['obs_columns'].items())}",
    ]
    if info["obsm_keys"]:
        lines.append(f"obsm         {', '.join(info['obsm_keys'])}")
    lines.append(f"truth        {'yes (simulated atlas)' if info['has_truth'] else 'no'}")
    lines.append("sources      name: cells, genes (shared with other sources / vocabulary genes it lacks)")
    for source in info["sources"]:
        coverage = source["coverage"]
        lines.append(
            f"  {source['name']}: {source['n_cells']:,} cells, {source['n_genes']:,} genes "
            f"({coverage['genes_shared_with_other_sources']:,} shared / {coverage['vocabulary_genes_missing']:,} missing)"
        )
    return "\n".join(lines)
