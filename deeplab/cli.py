"""``python -m deeplab``: train, evaluate, score, info, deviations, data synth/download, weights prefetch.

Each subcommand parses its arguments and hands them to one function; a DeeplabError becomes one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from deeplab.errors import DeeplabError


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def _cmd_train(args: argparse.Namespace) -> int:
    from deeplab.config import load_config
    from deeplab.runner import train_from_cli

    cfg = load_config(args.config, args.set)
    return train_from_cli(cfg, Path(args.run_dir), progress=args.progress)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from deeplab.runner import evaluate_checkpoint_cli

    return evaluate_checkpoint_cli(
        Path(args.checkpoint),
        overrides=args.set,
        scales=args.scales,
        flip=args.flip,
        save_predictions=Path(args.save_predictions) if args.save_predictions else None,
        json_out=Path(args.json) if args.json else None,
    )


def _cmd_score(args: argparse.Namespace) -> int:
    from deeplab.scoring import format_table, score_folder

    result = score_folder(Path(args.gt), Path(args.pred), split=args.split)
    print(format_table(result))
    if args.json:
        result.write_json(Path(args.json))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from deeplab.config import load_config
    from deeplab.model import model_info

    cfg = load_config(args.config, args.set)
    print(json.dumps(model_info(cfg.model, cfg.data.crop_size), indent=2))
    return 0


def _cmd_deviations(args: argparse.Namespace) -> int:
    from deeplab.config import load_config
    from deeplab.fidelity import deviations_markdown, docs_markdown

    if args.docs:
        text = docs_markdown(Path(__file__).resolve().parents[1] / "configs")
        tmp = Path(f"{args.docs}.tmp")
        tmp.write_text(text)
        tmp.replace(args.docs)
        print(f"wrote {args.docs}")
    if args.config:
        print(deviations_markdown(load_config(args.config, args.set), args.config), end="")
    if not (args.docs or args.config):
        raise DeeplabError("deviations: give a CONFIG, --docs PATH or both")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from deeplab.data.synth import synthesize

    synthesize(Path(args.out), train=args.train, val=args.val, height=args.height, width=args.width, seed=args.seed)
    print(f"synthetic Cityscapes-layout dataset written to {args.out}")
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from deeplab.data.download import download

    download(Path(args.dest), packages=args.packages, keep_archives=args.keep_archives)
    return 0


def _cmd_prefetch(args: argparse.Namespace) -> int:
    from deeplab.model import prefetch_weights

    for path in prefetch_weights(args.backbones):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deeplab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("config", help="YAML config file (see configs/)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.seed=1")

    p = sub.add_parser("train", help="train (resumes when RUN_DIR holds a checkpoint)")
    with_config(p)
    p.add_argument("--run-dir", required=True, help="everything the run writes goes here")
    p.add_argument("--progress", choices=["auto", "bar", "lines"], default="auto")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint (single or multi-scale + flip)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. data.root=/path")
    p.add_argument("--scales", type=_floats, default=None, help="e.g. 0.5,0.75,1,1.25,1.5,1.75")
    p.add_argument("--flip", action="store_true")
    p.add_argument("--save-predictions", metavar="DIR", help="write official labelIds PNGs here")
    p.add_argument("--json", metavar="OUT")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("score", help="score a folder of labelIds PNGs like the official evaluation")
    p.add_argument("--gt", required=True, help="Cityscapes root (holds gtFine/)")
    p.add_argument("--pred", required=True, help="folder of <city>_<seq>_<frame>*.png labelIds predictions")
    p.add_argument("--split", default="val")
    p.add_argument("--json", metavar="OUT")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("info", help="parameters, FLOPs and output stride as JSON")
    with_config(p)
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser(
        "deviations", help="the seed's recipe beside a config: what differs and the flag that removes it"
    )
    p.add_argument("config", nargs="?", help="YAML config file (see configs/)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. model.align_corners=true"
    )
    p.add_argument("--docs", metavar="PATH", help="(re)generate the tables of every configs/cityscapes_*.yaml preset")
    p.set_defaults(func=_cmd_deviations)

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("synth", help="write a synthetic dataset in the official Cityscapes layout")
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=32)
    p.add_argument("--val", type=int, default=8)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_synth)
    p = data.add_parser("download", help="fetch the official archives (needs a cityscapes-dataset.com account)")
    p.add_argument("--dest", required=True)
    p.add_argument("--packages", nargs="+", default=["gtFine_trainvaltest.zip", "leftImg8bit_trainvaltest.zip"])
    p.add_argument("--keep-archives", action="store_true")
    p.set_defaults(func=_cmd_download)

    weights = sub.add_parser("weights", help="backbone weights").add_subparsers(dest="weights_command", required=True)
    p = weights.add_parser("prefetch", help="fill the torch hub cache (run on a login node with internet)")
    p.add_argument("--backbones", nargs="+", default=["resnet50", "resnet101"])
    p.set_defaults(func=_cmd_prefetch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DeeplabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
