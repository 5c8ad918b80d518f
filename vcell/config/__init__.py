"""One typed, strict configuration tree: schema (sections) + loader (YAML, base, overrides)."""

from vcell.config.loader import default_config_path, dump_config, load_config, save_config
from vcell.config.schema import BuildConfig, CodecConfig, DataConfig, SynthConfig, VCellConfig

__all__ = [
    "BuildConfig",
    "CodecConfig",
    "DataConfig",
    "SynthConfig",
    "VCellConfig",
    "default_config_path",
    "dump_config",
    "load_config",
    "save_config",
]
