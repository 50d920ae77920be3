"""``python -m deeplab``: train, evaluate, score, info, deviations, data synth/download, weights prefetch.

Each subcommand parses its arguments and hands them to one function; a DeeplabError (or an OSError) becomes one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from deeplab.arguments import int_in, positive_floats
from deeplab.errors import DeeplabError, run_command
from deeplab.outputs import check_output_dir, check_output_file


def _cmd_train(args: argparse.Namespace) -> int:
    from deeplab.config import load_config

    run_dir = check_output_dir(args.run_dir, "--run-dir")
    cfg = load_config(args.config, args.set)  # before torch is imported: a bad config fails in a second
    from deeplab.runner import train_from_cli

    return train_from_cli(cfg, run_dir, progress=args.progress, device=args.device)


# Outputs are checked before the heavy imports: a bad path fails in a fraction of a second.
def _cmd_evaluate(args: argparse.Namespace) -> int:
    predictions = check_output_dir(args.save_predictions, "--save-predictions") if args.save_predictions else None
    json_out = check_output_file(args.json, "--json") if args.json else None
    from deeplab.runner import evaluate_checkpoint_cli

    return evaluate_checkpoint_cli(
        Path(args.checkpoint),
        overrides=args.set,
        scales=args.scales,
        flip=args.flip,
        save_predictions=predictions,
        json_out=json_out,
    )


def _cmd_score(args: argparse.Namespace) -> int:
    json_out = check_output_file(args.json, "--json") if args.json else None
    from deeplab.scoring import format_table, score_folder

    result = score_folder(Path(args.gt), Path(args.pred), split=args.split)
    print(format_table(result))
    if json_out:
        result.write_json(json_out)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from deeplab.config import load_config
    from deeplab.model import model_info

    cfg = load_config(args.config, args.set)
    print(json.dumps(model_info(cfg.model, cfg.data.crop_size), indent=2))
    return 0


def _cmd_deviations(args: argparse.Namespace) -> int:
    if not (args.docs or args.config):
        raise DeeplabError("deviations: give a CONFIG, --docs PATH or both")
    docs = check_output_file(args.docs, "--docs") if args.docs else None
    from deeplab.config import load_config
    from deeplab.fidelity import deviations_markdown, docs_markdown

    if docs:
        text = docs_markdown(Path(__file__).resolve().parents[1] / "configs")
        tmp = docs.with_name(f".{docs.name}.tmp")
        tmp.write_text(text)
        tmp.replace(docs)
        print(f"wrote {docs}")
    if args.config:
        print(deviations_markdown(load_config(args.config, args.set), args.config), end="")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    out = check_output_dir(args.out, "data synth --out")
    from deeplab.data.synth import synthesize

    synthesize(
        out,
        train=args.train,
        val=args.val,
        height=args.height,
        width=args.width,
        seed=args.seed,
    )
    print(f"synthetic Cityscapes-layout dataset written to {args.out}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from deeplab.data.check import available_cpus, check_split
    from deeplab.errors import DeeplabError

    workers = available_cpus() if args.workers is None else args.workers
    checks = [check_split(args.root, split, workers=workers, progress=args.progress) for split in args.split]
    for checked in checks:
        for problem in checked.problems:
            print(f"  {problem}")
        print(f"{checked.split}: {checked.summary()}")
    bad = sum(len(c.problems) for c in checks)
    if bad:
        raise DeeplabError(f"data check: {bad} bad file(s) under {args.root} (listed above)")
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    from deeplab.data.cache import build_cache
    from deeplab.data.check import available_cpus
    from deeplab.data.cityscapes import split_files

    out = check_output_dir(args.out or Path(args.root) / "cache", "data cache --out")
    for split in args.split:  # every split's layout before anything is written
        split_files(Path(args.root), split)
    workers = available_cpus() if args.workers is None else args.workers
    for split in args.split:
        folder = build_cache(args.root, split, out, workers=workers, progress=args.progress)
        print(f"{split}: decoded into {folder} (set data.cache={out})")
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    dest = check_output_dir(args.dest, "data download --dest")
    from deeplab.data.download import download

    download(dest, packages=args.packages, keep_archives=args.keep_archives)
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
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default=None,
        help="override train.device for this run without changing its identity (cuda without a GPU is an error)",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint (single or multi-scale + flip)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. data.root=/path")
    p.add_argument("--scales", type=positive_floats, default=None, help="e.g. 0.5,0.75,1,1.25,1.5,1.75")
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
    p = data.add_parser("check", help="decode every image and label of a split; list every bad file")
    p.add_argument("root", help="Cityscapes root (holds leftImg8bit/ and gtFine/)")
    p.add_argument("--split", nargs="+", default=["train", "val"])
    p.add_argument("--workers", type=int_in(0), default=None, help="decoding processes (default: the CPUs available)")
    p.add_argument("--progress", choices=["auto", "bar", "lines"], default="auto")
    p.set_defaults(func=_cmd_check)
    p = data.add_parser("cache", help="decode splits once into memory-mappable files (resumable)")
    p.add_argument("root", help="Cityscapes root (holds leftImg8bit/ and gtFine/)")
    p.add_argument("--split", nargs="+", default=["train", "val"])
    p.add_argument("--out", default=None, help="cache folder (default: ROOT/cache); point data.cache at it")
    p.add_argument("--workers", type=int_in(0), default=None, help="decoding processes (default: the CPUs available)")
    p.add_argument("--progress", choices=["auto", "bar", "lines"], default="auto")
    p.set_defaults(func=_cmd_cache)
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
    return run_command(build_parser().parse_args(argv))
