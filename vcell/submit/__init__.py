"""Cluster jobs: `vcell train|tune` submitted to a Ray cluster (Jobs API), Slurm or KubeRay.

`job` (what runs, checks made before submitting), `ray_jobs` (the Ray Jobs API), `render`
(Slurm scripts and KubeRay manifests from the templates in cluster/).
"""
