"""The report's seed-deviations section: one table for every config compared, then only what differs by config."""

from __future__ import annotations

import pandas as pd

from deeplab.fidelity import Deviation, deviations
from experiments.axes import pieces

SHORT = {"resnet50": "res50", "resnet101": "res101"}


def _match(row: Deviation) -> str:
    return row.match if row.match in ("yes", "cannot", "axis") else f"**{row.match}**"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def deviations_section(runs: pd.DataFrame) -> list[str]:
    """deeplab.fidelity's table once for the compared runs' distinct configs (seeds share one): the aspects where
    they agree with their common value, then one column per config for the aspects where they differ."""
    configs: dict[tuple, tuple[list[Deviation], list[str]]] = {}
    for backbone, iterations, config in zip(runs.backbone, runs.iterations, runs.config, strict=True):
        rows = deviations(config)
        key = tuple((r.aspect, r.this, r.match, r.remedy) for r in rows)
        configs.setdefault(key, (rows, []))[1].append(
            f"{SHORT.get(backbone, backbone)} @ {pieces({'train.iterations': iterations})[0]}"
        )
    tables = list(configs.values())
    names = [", ".join(dict.fromkeys(names)) for _, names in tables]
    first = tables[0][0]
    differs = {
        i for i, row in enumerate(first) if any((t[i].this, t[i].match) != (row.this, row.match) for t, _ in tables)
    }
    lines = [
        "## Deviations from the seed",
        "",
        f"The seed's recipe beside the {len(tables)} distinct config(s) compared ({'; '.join(names)}); "
        "`to match` names the setting that removes a deviation (docs/deviations.md).",
        "",
        "| aspect | seed | these runs | match | to match |",
        "|---|---|---|---|---|",
    ]
    for i, row in enumerate(first):
        this, match = ("differs by config: below", "–") if i in differs else (row.this, _match(row))
        lines.append(f"| {_cell(row.aspect)} | {_cell(row.seed)} | {_cell(this)} | {match} | {_cell(row.remedy)} |")
    if differs:
        lines += ["", "Where the configs differ:", "", "| aspect | " + " | ".join(names) + " |"]
        lines.append("|---|" + "---|" * len(names))
        for i in sorted(differs):
            cells = [f"{_cell(t[i].this)} ({_match(t[i])})" for t, _ in tables]
            lines.append(f"| {_cell(first[i].aspect)} | " + " | ".join(cells) + " |")
    return [*lines, ""]
