"""What fixes a run's trajectory beyond its config, recorded in every checkpoint and checked on resume.

The config hash fixes the recipe as written; these fix it as it ran: a resume with another world size, batch,
device kind, autocast or normalisation would change the recipe mid-run without changing the hash. Such a resume
is refused, or accepted only when ``DEEPLAB_RESUME_ACCEPT`` names what may change (the environment, so the
config hash stays); the acceptance goes into the checkpoint's ``history`` and the run's tags.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deeplab.config import Config
from deeplab.data.identity import files_digest, split_file_names
from deeplab.errors import DeeplabError
from deeplab.norm import CpuSyncBatchNorm

ACCEPT_ENV = "DEEPLAB_RESUME_ACCEPT"
# Keys of the record, in the order a refusal names them. The per-GPU batch sets BatchNorm statistics (without
# sync-BN) and OHEM's n_min; the global batch sets which stream positions each iteration reads; the training
# files set the epoch permutation; autocast and the fp16 GradScaler change every update.
KEYS = ("world_size", "batch_per_gpu", "global_batch", "device", "amp", "grad_scaler", "sync_bn", "train_images",
        "train_files")  # fmt: skip
# Recorded, told on resume, never refused: they change rounding, not the recipe.
ENVIRONMENT = ("torch", "cuda", "gpu")


def trajectory(cfg: Config, model: nn.Module, device: torch.device, scaler: torch.amp.GradScaler, world: int) -> dict:
    """The record of this process's run as it executes (``model`` after SyncBN conversion)."""
    files = split_file_names(Path(cfg.data.root), cfg.data.train_split)
    return {
        "world_size": world,
        "batch_per_gpu": cfg.data.batch_size_per_gpu,
        "global_batch": cfg.data.batch_size_per_gpu * world,
        "device": device.type,
        "amp": cfg.train.amp,
        "grad_scaler": scaler.is_enabled(),
        "sync_bn": any(isinstance(m, (nn.SyncBatchNorm, CpuSyncBatchNorm)) for m in model.modules()),
        "train_images": len(files),
        "train_files": files_digest(files),
    }


def environment(device: torch.device) -> dict:
    cuda = device.type == "cuda"
    return {
        "torch": str(torch.__version__),
        "cuda": str(torch.version.cuda) if cuda else None,
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
    }


def changes(old: dict, new: dict, keys: tuple[str, ...] = KEYS) -> list[tuple[str, Any, Any]]:
    """``(key, old, new)`` for each recorded key whose value differs."""
    return [(k, old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)]


def describe(diff: list[tuple[str, Any, Any]]) -> str:
    return ", ".join(f"{k} {_show(a)} → {_show(b)}" for k, a, b in diff)


def _show(value: Any) -> str:
    return "unknown" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def accepted_keys() -> set[str]:
    """The keys ``DEEPLAB_RESUME_ACCEPT`` lets change (``all``: every key); a key we do not record is an error."""
    text = os.environ.get(ACCEPT_ENV, "").strip()
    names = {n.strip() for n in text.split(",") if n.strip()}
    if names == {"all"}:
        return set(KEYS)
    unknown = sorted(names - set(KEYS))
    if unknown:
        raise DeeplabError(f"{ACCEPT_ENV}={text!r}: unknown key {unknown[0]!r} (known: all, {', '.join(KEYS)})")
    return names


def check_resume(path: Path, state: dict, now: dict) -> str | None:
    """None when the checkpoint's record matches ``now``; the accepted change's text when ``DEEPLAB_RESUME_ACCEPT``
    covers it; else a DeeplabError in one line naming what differs and the ways out."""
    diff = changes(state["trajectory"], now)
    if not diff:
        return None
    accepted = accepted_keys()
    if all(key in accepted for key, _, _ in diff):
        return f"{describe(diff)} (accepted by {ACCEPT_ENV})"
    old = state["trajectory"]
    raise DeeplabError(
        f"{path}: resuming at iteration {state['iteration']} would change the run's trajectory: {describe(diff)}; "
        f"resume as it ran ({old.get('world_size')} ranks × {old.get('batch_per_gpu')} images on "
        f"{old.get('device')}, amp {old.get('amp')}), or set {ACCEPT_ENV}={','.join(k for k, _, _ in diff)} to "
        "continue anyway (recorded in the checkpoint and the run's tags), or use another --run-dir"
    )


def on_resume(path: Path, state: dict, now: dict, env: dict) -> tuple[list[dict] | None, dict[str, str], str | None]:
    """(the checkpoint's new history or None when unchanged, tags for the run, a line to say or None); raises the
    refusal. A checkpoint written before the record existed resumes as unknown: said once, since the history
    written with it then holds the record."""
    it = state["iteration"]
    if state.get("trajectory") is None:
        history = [history_entry(0, None, None), history_entry(it, now, None)]
        note = f"written before checkpoints recorded the trajectory: unknown before iteration {it}; now "
        note += describe_record(now)
        return history, {"resume.trajectory_unknown_before": str(it)}, note
    accepted = check_resume(path, state, now)
    if accepted is not None:
        history = [*state.get("history", []), history_entry(it, now, accepted)]
        note = f"resuming at iteration {it} with a changed trajectory: {accepted}"
        return history, {"resume.accepted": accepted_text(history)}, note
    moved = changes(state.get("environment", {}), env, ENVIRONMENT)
    if moved:
        return None, {}, f"resuming on {describe(moved)} (rounding may differ, the recipe does not)"
    return None, {}, None


def describe_record(record: dict) -> str:
    return ", ".join(f"{k} {_show(record.get(k))}" for k in KEYS)


def history_entry(iteration: int, record: dict | None, accepted: str | None) -> dict:
    """One segment of the run: from ``iteration`` on it ran as ``record`` (None: unknown)."""
    return {"from_iteration": iteration, "trajectory": record, "accepted": accepted}


def accepted_text(history: list[dict]) -> str:
    """Every acceptance of the run, for its tags: ``it 4: world_size 2 → 1, …; it 9: …``."""
    return "; ".join(f"it {h['from_iteration']}: {h['accepted']}" for h in history if h["accepted"])
