"""Packaging beyond pyproject.toml: `configs/` and `cluster/` live at the top of the source tree
(where users read and edit them) and ship inside the wheel as `vcell/configs/` and
`vcell/cluster_templates/`, so a non-editable install (`pip install .`, the Docker image) finds
the default configs, the DeepSpeed JSON files and the cluster templates (`vcell.files.shipped_folder`).
Everything else (metadata, dependencies, entry points) is in pyproject.toml.
"""

from setuptools import find_packages, setup

# installed package name -> folder in the source tree
SHIPPED = {"vcell.configs": "configs", "vcell.cluster_templates": "cluster"}

setup(
    packages=[*find_packages(include=["vcell", "vcell.*"]), *SHIPPED],
    package_dir=SHIPPED,
    package_data={name: ["*", "**/*"] for name in SHIPPED},
)
