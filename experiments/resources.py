"""What a sweep's runs ask of the machines, said before anything is submitted: GPUs per run, and the GPU memory
each cell needs per GPU (deeplab.memory's estimate) with a warning where a 16 or 24 GB card cannot hold it."""

from __future__ import annotations

from typing import Any

from experiments.axes import pieces
from experiments.spec import RunSpec, SweepSpec


def gpus_per_run(spec: SweepSpec) -> int:
    """GPUs one run of the sweep holds (nodes × GPUs per node)."""
    return spec.slurm.nodes * spec.slurm.gpus_per_node


def grid_key(values: dict[str, Any], drop: set[str]) -> tuple:
    """A run's grid values as a hashable key, the axes in ``drop`` left out (the seed: the run's cell)."""
    return tuple(sorted((k, repr(v)) for k, v in values.items() if k not in drop))


def grid_label(values: dict[str, Any]) -> str:
    """Grid values as a table's cell label, spelled as the runs' tags: ``backbone=resnet50 iterations=2000``."""
    return " ".join(pieces(values)) or "(one cell)"


def memory_lines(runs: list[RunSpec], world_size: int) -> list[str]:
    """GPU memory per GPU of each cell (deeplab.memory's estimate) and a warning line for each cell that a 16 or
    24 GB card cannot hold: said before anything is submitted."""
    from deeplab.memory import card_warning, estimate_training_memory

    cells: dict[tuple, RunSpec] = {}
    for run in runs:
        cells.setdefault(grid_key(run.values, {"train.seed"}), run)
    lines = [f"GPU memory per GPU, training ({world_size} ranks; estimate ±25%, deeplab.memory):"]
    for run in cells.values():
        label, c = grid_label({k: v for k, v in run.values.items() if k != "train.seed"}), run.config
        estimate = estimate_training_memory(c, world_size)
        (h, w), b = c.data.crop_size, c.data.batch_size_per_gpu
        lines.append(
            f"  {label:<36} {estimate.gb:5.1f} GB  ({c.model.backbone}, {h}×{w} crop, {b}/GPU, amp {c.train.amp})"
        )
        if (warning := card_warning(estimate)) is not None:
            lines.append(f"  WARNING {label}: {warning}; ask for larger GPUs (executor.slurm.constraint)")
    return lines
