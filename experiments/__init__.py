"""Sweeps: YAML grids → submitit jobs (SLURM, local) → MLflow runs."""
