"""vcell: distributed training of virtual-cell models on Zarr-sharded single-cell atlases."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vcell")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"
