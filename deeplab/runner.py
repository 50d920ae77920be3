"""The engine and the evaluator run from the command line: JSONL tracker, signals, exit codes, outputs."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from deeplab.checkpoint import load_checkpoint, weights_of
from deeplab.config import Config, from_dict, parse_override
from deeplab.data.loader import build_val_dataset
from deeplab.distributed import init_distributed
from deeplab.engine import StopFlag, signal_handlers, train
from deeplab.errors import DeeplabError
from deeplab.evaluate import evaluate
from deeplab.lease import LeaseHeld
from deeplab.model import build_model
from deeplab.overlay import save_label_ids
from deeplab.scoring import ScoreResult, format_table
from deeplab.tracking import JsonlTracker

EXIT_INTERRUPTED = 3  # checkpointed on a signal: run the same command again to resume


def train_from_cli(cfg: Config, run_dir: Path, progress: str = "auto", device: str | None = None) -> int:
    """Train with the JSONL tracker; 0 when finished, EXIT_INTERRUPTED when stopped by a signal."""
    info = init_distributed(device or cfg.train.device)
    tracker = JsonlTracker(run_dir) if info.is_main else None

    def failed(reason: str) -> None:  # also called by FailureWatch: another rank failed while this one waited
        if tracker is not None and run_dir.exists():
            tracker.close("FAILED", reason)

    flag = StopFlag()
    with signal_handlers(flag):
        try:
            result = train(cfg, run_dir, tracker, stop=flag, progress=progress, device=device, on_peer_failure=failed)
        except LeaseHeld:  # the run directory is another process's: touch nothing in it
            raise
        except DeeplabError as err:
            failed(str(err))
            raise
    if result.status == "interrupted":
        if tracker is not None:
            tracker.close("KILLED")
        return EXIT_INTERRUPTED
    if tracker is not None:
        tracker.close("FINISHED")
        with contextlib.suppress(BrokenPipeError):  # recorded already; nobody reads the line any more
            print(f"val mIoU {result.metrics['val/mIoU']:.2f} (run dir {run_dir})", flush=True)
    return 0


def evaluate_checkpoint_cli(
    checkpoint: Path,
    *,
    overrides: list[str],
    scales: tuple[float, ...] | None,
    flip: bool,
    save_predictions: Path | None,
    json_out: Path | None,
) -> int:
    """Evaluate a checkpoint on its config's validation split (overrides e.g. data.root=…)."""
    state = load_checkpoint(checkpoint)
    weights = weights_of(state, checkpoint)
    cfg = from_dict(state["config"], dict(parse_override(o) for o in overrides))
    info = init_distributed(cfg.train.device)
    dataset = build_val_dataset(cfg)
    model = build_model(from_dict({**state["config"], "model": {**state["config"]["model"], "weights": "none"}}).model)
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise DeeplabError(f"{checkpoint}: weights do not fit its model ({str(err).splitlines()[0][:120]})") from None
    model.to(info.device)

    def write(_index: int, name: str, _image, _mask, pred) -> None:
        save_label_ids(save_predictions / f"{name}_pred_labelIds.png", pred)

    result = evaluate(
        model,
        dataset,
        cfg.data,
        scales=scales or cfg.eval.scales,
        flip=flip or cfg.eval.flip,
        device=info.device,
        amp=cfg.train.amp,
        align_corners=cfg.model.align_corners,
        per_image=False,
        progress=info.is_main,
        on_prediction=write if save_predictions else None,
    )
    if not info.is_main:
        return 0
    m = result.metrics
    score = ScoreResult(result.confusion, m.iou, m.miou, m.category_iou, m.category_miou, m.miou_seed, len(dataset))
    print(format_table(score))
    if json_out is not None:
        payload = {
            "checkpoint": str(checkpoint),
            "iteration": state["iteration"],
            "scales": list(scales or cfg.eval.scales),
            "flip": flip or cfg.eval.flip,
            **score.to_dict(),
        }
        tmp = Path(f"{json_out}.tmp")
        tmp.write_text(json.dumps(payload, indent=1))
        os.replace(tmp, json_out)
    return 0
