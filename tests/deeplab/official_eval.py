"""Run cityscapesscripts' own evalPixelLevelSemanticLabeling on a folder and print its scores as JSON.

Used by the tests in a subprocess: the official module reads CITYSCAPES_* environment variables at import.
Usage: python official_eval.py GT_ROOT PRED_DIR SPLIT
"""

import glob
import json
import os
import sys

gt_root, pred_dir, split = sys.argv[1:4]
os.environ["CITYSCAPES_DATASET"] = gt_root
os.environ["CITYSCAPES_RESULTS"] = pred_dir
os.environ["CITYSCAPES_EXPORT_DIR"] = pred_dir

from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev  # noqa: E402

ev.args.evalInstLevelScore = False  # needs instanceIds PNGs and np.in1d (gone in numpy 2.4)
ev.args.evalPixelAccuracy = False
ev.args.JSONOutput = False
ev.args.quiet = True
gts = sorted(glob.glob(os.path.join(gt_root, "gtFine", split, "*", "*_gtFine_labelIds.png")))
preds = [ev.getPrediction(ev.args, gt) for gt in gts]
result = ev.evaluateImgLists(preds, gts, ev.args)
out = {k: result[k] for k in ("classScores", "averageScoreClasses", "categoryScores", "averageScoreCategories")}
print(json.dumps(out))
