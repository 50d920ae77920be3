"""Scoring a folder of predictions: deeplab.scoring (bincount confusion matrix) vs cityscapesscripts' official
evalPixelLevelSemanticLabeling, on the same 2048×1024 ground truth and labelIds predictions.

Ground truth comes from the project's synthetic generator (official layout, real label ids incl. void); each
prediction is its ground truth shifted sideways with 2 % of the pixels set to random label ids (void ids
included), so every confusion path is exercised. Both scorers read the PNG files themselves; the official one
runs in this process with instance scores off (as in tests/deeplab/official_eval.py). Runs alternate (ABBA);
figures are medians. Both must give the same mIoU (bit-equal). Goal: official / ours time >= 10x.

Both figures include reading the PNGs, which neither scorer can avoid. Each reads them its own way: the official
through PIL, ours through libpng (torchvision's decode_png) for plain 8-bit greyscale and PIL for anything else.
Each reader's time over the same files is measured alone, and the counting ratio compares the time each scorer spends
beyond its own reading. A profile of ours splits that part into the id check, the count and the rest (finding the
files). The engine's in-memory path, ``ConfusionMatrix.update`` on train-id tensors of the same frames, is timed in
the same rotation for reference.

    python bench/bench_metric.py [--quick] [--data DIR] [--threads N]
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deeplab.data.synth import synthesize
from deeplab.labels import VALID_LABEL_IDS, id_to_train_id_lut
from deeplab.metrics import ConfusionMatrix
from deeplab.scoring import decode_ids, label_id_confusion, score_folder

GOAL = 10.0


def make_data(root: Path, images: int) -> tuple[Path, Path]:
    """``root/cityscapes`` (val split of ``images`` frames) and ``root/pred`` with one prediction per frame."""
    gt_root = root / "cityscapes"
    if not (gt_root / "gtFine" / "val").is_dir():
        synthesize(gt_root, train=1, val=images, height=1024, width=2048, seed=0)
    pred_dir = root / "pred"
    pred_dir.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    ids = np.array(VALID_LABEL_IDS, dtype=np.uint8)
    for gt_file in sorted((gt_root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png")):
        out = pred_dir / gt_file.name.replace("_gtFine_labelIds.png", "_pred.png")
        if out.exists():
            continue
        pred = np.roll(np.array(Image.open(gt_file)), int(rng.integers(4, 40)), axis=1)
        noise = rng.random(pred.shape) < 0.02
        pred[noise] = rng.choice(ids, size=int(noise.sum()))
        Image.fromarray(pred).save(out)
    return gt_root, pred_dir


def official_scorer(gt_root: Path, pred_dir: Path):
    """cityscapesscripts' evaluation, configured once (it reads CITYSCAPES_* at import); returns a timed run."""
    os.environ.update(CITYSCAPES_DATASET=str(gt_root), CITYSCAPES_RESULTS=str(pred_dir))
    os.environ["CITYSCAPES_EXPORT_DIR"] = str(pred_dir)
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev

    ev.args.evalInstLevelScore = False  # needs instanceIds PNGs and np.in1d (gone in numpy 2.4)
    ev.args.evalPixelAccuracy = False
    ev.args.JSONOutput = False
    ev.args.quiet = True

    def run() -> tuple[float, float]:
        tick = time.perf_counter()
        ev.args.predictionPath, ev.args.predictionWalk = str(pred_dir), None  # walk the folder anew each run
        gts = sorted(glob.glob(os.path.join(gt_root, "gtFine", "val", "*", "*_gtFine_labelIds.png")))
        preds = [ev.getPrediction(ev.args, gt) for gt in gts]
        miou = ev.evaluateImgLists(preds, gts, ev.args)["averageScoreClasses"]
        return time.perf_counter() - tick, miou

    return run


def ours_scorer(gt_root: Path, pred_dir: Path):
    def run() -> tuple[float, float]:
        tick = time.perf_counter()
        miou = score_folder(gt_root, pred_dir, "val").miou
        return time.perf_counter() - tick, miou

    return run


def confusion_matrix_scorer(gt_root: Path, pred_dir: Path):
    """The engine's path: train-id tensors already in memory, one ``ConfusionMatrix.update`` per frame."""
    lut = torch.from_numpy(id_to_train_id_lut())
    gts = sorted((gt_root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    frames = []
    for gt_file in gts:
        pred_file = pred_dir / gt_file.name.replace("_gtFine_labelIds.png", "_pred.png")
        gt, pred = (lut[torch.from_numpy(np.array(Image.open(f))).long()] for f in (gt_file, pred_file))
        frames.append((pred, gt))

    def run() -> tuple[float, float]:
        tick = time.perf_counter()
        matrix = ConfusionMatrix()
        for pred, gt in frames:
            matrix.update(pred, gt)
        miou = matrix.compute().miou
        return time.perf_counter() - tick, miou

    return run


def _files(gt_root: Path, pred_dir: Path) -> list[Path]:
    return sorted((gt_root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png")) + sorted(pred_dir.glob("*.png"))


def read_pil(gt_root: Path, pred_dir: Path) -> float:
    """Seconds to read every GT and prediction PNG once through PIL: the official evaluation's floor."""
    files = _files(gt_root, pred_dir)
    tick = time.perf_counter()
    for path in files:
        with Image.open(path) as img:
            np.array(img)
    return time.perf_counter() - tick


def read_ours(gt_root: Path, pred_dir: Path) -> float:
    """The same through deeplab.scoring.decode_ids: score_folder's floor."""
    files = _files(gt_root, pred_dir)
    tick = time.perf_counter()
    for path in files:
        decode_ids(path, "file")
    return time.perf_counter() - tick


def profile_counting(gt_root: Path, pred_dir: Path, runs: int) -> dict[str, float]:
    """Seconds per run of score_folder's per-frame work beyond reading, on frames already decoded."""
    frames = []
    for gt_file in sorted((gt_root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png")):
        pred_file = pred_dir / gt_file.name.replace("_gtFine_labelIds.png", "_pred.png")
        frames.append((decode_ids(gt_file, "gt"), decode_ids(pred_file, "pred")))
    parts: dict[str, list[float]] = {"id check": [], "count": []}
    for _ in range(runs):
        tick = time.perf_counter()
        for gt, pred in frames:
            int(gt.max()), int(pred.max())
        parts["id check"].append(time.perf_counter() - tick)
        tick = time.perf_counter()
        for gt, pred in frames:
            label_id_confusion(pred, gt)
        parts["count"].append(time.perf_counter() - tick)
    return {name: statistics.median(t) for name, t in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 images, 3 runs each instead of 20, 5")
    parser.add_argument("--data", type=Path, default=None, help="reuse (or create) the data here")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (0: torch's choice); ours splits its count"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    images, runs = (8, 3) if args.quick else (20, 5)
    with tempfile.TemporaryDirectory(prefix="bench_metric.") as tmp:
        root = args.data or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        gt_root, pred_dir = make_data(root, images)
        n = len(list((gt_root / "gtFine" / "val").glob("*/*.png")))
        scorers = {
            "official": official_scorer(gt_root, pred_dir),
            "ours": ours_scorer(gt_root, pred_dir),
            "in-memory": confusion_matrix_scorer(gt_root, pred_dir),
            "read-pil": lambda: (read_pil(gt_root, pred_dir), None),
            "read-ours": lambda: (read_ours(gt_root, pred_dir), None),
        }
        for run in scorers.values():  # warm the page cache and imports
            run()
        times: dict[str, list[float]] = {name: [] for name in scorers}
        mious: dict[str, set[float]] = {name: set() for name in scorers}
        for i in range(runs):
            for name in list(scorers) if i % 2 == 0 else list(scorers)[::-1]:
                seconds, miou = scorers[name]()
                times[name].append(seconds)
                mious[name].add(miou)
        profile = profile_counting(gt_root, pred_dir, runs)
    med = {name: statistics.median(t) for name, t in times.items()}
    floor = {"pil": med["read-pil"], "ours": med["read-ours"]}
    same = mious["official"] == mious["ours"] and len(mious["ours"]) == 1
    threads = torch.get_num_threads()
    print(f"{n} frames 2048x1024 (GT + prediction PNGs), {runs} alternating runs each, medians, {threads} threads")
    labels = {"official": "official evaluation", "ours": "deeplab score_folder", "in-memory": "ConfusionMatrix.update"}
    for name, label in labels.items():  # the readers have no mIoU
        mious_text = ", ".join(f"{float(m):.6f}" for m in sorted(mious[name]))
        print(f"{label:23s} {med[name]:7.3f} s ({1000 * med[name] / n:5.1f} ms/frame)  mIoU {mious_text}")
    print(f"reading, PIL (official) {floor['pil']:7.3f} s ({1000 * floor['pil'] / n:5.1f} ms/frame)")
    print(f"reading, decode_ids     {floor['ours']:7.3f} s ({1000 * floor['ours'] / n:5.1f} ms/frame)")
    official_beyond, ours_beyond = med["official"] - floor["pil"], med["ours"] - floor["ours"]
    rest = ours_beyond - sum(profile.values())
    split = ", ".join(f"{k} {1000 * v / n:.2f}" for k, v in profile.items())
    print(f"score_folder beyond reading {1000 * ours_beyond / n:.2f} ms/frame: {split}, rest {1000 * rest / n:.2f}")
    print(f"same mIoU (official vs score_folder): {'yes, bit-equal' if same else 'NO'}")
    print(f"official / ours time end to end (PNG reading included) {med['official'] / med['ours']:.1f}x")
    in_memory = official_beyond / med["in-memory"]
    verdict = "PASS" if in_memory >= GOAL and mious["in-memory"] == mious["official"] else "FAIL"
    print(f"counting beyond reading, official / ConfusionMatrix.update (the engine's path): {in_memory:.1f}x {verdict}")
    beyond = official_beyond / max(ours_beyond, 1e-9)
    verdict = "PASS" if beyond >= GOAL and same else "FAIL"
    print(f"counting beyond reading, official / score_folder {beyond:.1f}x (goal >= {GOAL:.0f}x) {verdict}")


if __name__ == "__main__":
    main()
