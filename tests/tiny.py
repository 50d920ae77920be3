"""The real config shrunk for CPU tests (importable as `tiny` thanks to pytest's pythonpath)."""

from __future__ import annotations

from pathlib import Path

from deeplab.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "synthetic_tiny.yaml"
STUDY = REPO / "experiments" / "sweeps" / "r50_vs_r101_cityscapes.yaml"


def study_spec_file(tmp_path: Path, analysis: dict, seeds: int = 16) -> Path:
    """The shipped study spec with another ``analysis`` section and ``seeds`` seeds, written into ``tmp_path``."""
    import yaml

    spec = yaml.safe_load(STUDY.read_text())
    spec |= {"base": str(REPO / "configs" / "cityscapes_r101_seed.yaml"), "analysis": analysis}
    spec["grid"]["train.seed"] = list(range(seeds))
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    return path


def tiny_overrides(data_root: Path, **extra: object) -> list[str]:
    """synthetic_tiny.yaml shrunk to seconds of CPU: 32×64 crops, batch 2, a handful of iterations."""
    values: dict[str, object] = {
        "data.root": str(data_root),
        "data.synthetic": None,
        "data.crop_size": [32, 64],
        "data.batch_size_per_gpu": 2,
        "train.iterations": 6,
        "train.eval_every": 3,
        "train.checkpoint_every": 2,
        "train.log_every": 1,
        "train.deterministic": True,
        "schedule.warmup_iters": 2,
    }
    values.update(extra)
    return [f"{k}={_yaml(v)}" for k, v in values.items()]


def _yaml(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def tiny_config(data_root: Path, **extra: object) -> Config:
    return load_config(TINY, tiny_overrides(data_root, **extra))


def fork_log(total: int, interval: int = 100) -> str:
    """A log in the seed fork's format: a progress line every ``interval`` iterations (the last one before
    ``total``) and an epoch's validation after the last line printed before each epoch (372 iterations) ends."""
    lines, epoch_end = [], 372
    for it in range(interval, total, interval):
        lines.append(f"iter: {it}/{total}, lr: 0.001000, loss: {2 - it / total:.4f}, eta: 0:01:00, time: 8.0000")
        if it + interval > epoch_end:
            lines.append(f"mIOU is: 0.{50 + it // 100}")
            epoch_end += 372
    return "\n".join(lines) + "\n"
