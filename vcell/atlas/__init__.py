"""Atlases: sources (AnnData files, the simulator) -> sharded Zarr v3 store; info; validation."""
