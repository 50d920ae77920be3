"""The reports' markdown: tables from frames, and one self-contained HTML page (figures inlined) to mail or attach.

Markdown is rendered by Python-Markdown (with its ``tables`` extension). Raw HTML in the text is escaped, not
passed through: run names and notes are data. Images under the report's folder become data URIs.
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import NamedTuple

import markdown
import pandas as pd
from markdown.treeprocessors import Treeprocessor

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.85rem; max-width: 100%; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.4rem; text-align: left; overflow-wrap: anywhere; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; }
code { background: #f3f3f3; padding: 0 0.2rem; }
"""
_NUMBER = re.compile(r"^[−+-]?\d[\d.,]*$")
# what could make a link, an image or code of data; raw HTML (<, >) is escaped by the renderer itself, emphasis is
# harmless, and links or images the report did not make are dropped from report.html all the same (_Inline)
_MARKUP = re.compile(r"([\\`\[\]])")
# the only links the report makes: in-page anchors and MLflow run pages (provenance.run_link)
_OWN_LINK = re.compile(r"^(#[\w-]*|https?://[^\s\"'<>]+/#/experiments/\d+/runs/[0-9a-f]{32})$")


def _cell(text: str, markup: bool) -> str:
    return text if markup else md_escape(text)


def md_escape(text: object) -> str:
    """Data (run names, tags, params, axis values) as literal markdown text: no link, image, emphasis or code."""
    return _MARKUP.sub(r"\\\1", str(text)).replace("\n", " ")


_IMAGE_TYPES = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".2f", markup: tuple[str, ...] = ()) -> str:
    """A pipe table; integer-like columns without decimals, missing values as an en dash. Cells are data, escaped
    (``md_escape``), except in the ``markup`` columns, which hold the report's own markdown (e.g. run links)."""
    frame = frame.copy()
    for col in ("iterations", "seed", "n", "output_stride"):
        if col in frame:
            frame[col] = frame[col].astype("Int64").astype(str).replace("<NA>", "–")
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        cells = [
            format(v, floatfmt)
            if isinstance(v, float) and not math.isnan(v)
            else ("–" if isinstance(v, float) or v is None else _cell(str(v).replace("|", "/"), col in markup))
            for col, v in zip(cols, row, strict=True)
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


class _Inline(Treeprocessor):
    """Images under ``base`` as data URIs; numeric table cells right-aligned."""

    def __init__(self, md: markdown.Markdown, base: Path) -> None:
        super().__init__(md)
        self.base = base

    def run(self, root: ET.Element) -> None:
        parents = {child: parent for parent in root.iter() for child in parent}
        for img in list(root.iter("img")):
            src = img.get("src", "")
            path = (self.base / src).resolve()
            kind = _IMAGE_TYPES.get(path.suffix.lower())
            if kind and "://" not in src and path.is_relative_to(self.base.resolve()) and path.is_file():
                img.set("src", f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode("ascii"))
            else:  # not one of the report's own figures: never a request to another file or host
                _replace_with_text(img, parents, img.get("alt", ""))
        for a in list(root.iter("a")):
            if not _OWN_LINK.match(a.get("href", "")):
                _replace_with_text(a, parents, "".join(a.itertext()))
        for td in root.iter("td"):
            if td.text and _NUMBER.match(td.text.strip()) and len(td) == 0:
                td.set("class", "num")


def _replace_with_text(element: ET.Element, parents: dict[ET.Element, ET.Element], text: str) -> None:
    """Put ``text`` where ``element`` was (a link or image the report did not make itself)."""
    parent = parents[element]
    index = list(parent).index(element)
    tail = text + (element.tail or "")
    if index:
        before = parent[index - 1]
        before.tail = (before.tail or "") + tail
    else:
        parent.text = (parent.text or "") + tail
    parent.remove(element)


def markdown_to_html(text: str, base: Path) -> str:
    """The report's markdown as a standalone HTML page; images under ``base`` are inlined as data URIs."""
    # toc: every heading gets an id, so in-page links work (MLflow's artifact viewer allows no other kind)
    md = markdown.Markdown(extensions=["tables", "sane_lists", "toc"], output_format="html")
    md.preprocessors.deregister("html_block")  # raw HTML is text here
    md.inlinePatterns.deregister("html")
    md.inlinePatterns.deregister("entity")
    md.treeprocessors.register(_Inline(md, Path(base)), "inline_images", 0)
    first = text.splitlines()[0] if text else ""
    title = first.lstrip("# ").strip() if first.startswith("# ") else "report"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + md.convert(text)
        + "\n</body>\n</html>\n"
    )


class Written(NamedTuple):
    """What a report wrote: its report.md, and every file it wrote (pages and figures), the files it publishes."""

    report: Path
    files: list[Path]


PAGES = ("report.html", "report.md")


def write_pages(text: str, out: Path) -> Path:
    """``out/report.html`` (self-contained) and ``out/report.md``, each written whole or not at all; report.md
    goes last, so its presence marks a complete report. Returns report.md's path."""
    page = markdown_to_html(text, out)
    for name, content in zip(PAGES, (page, text), strict=True):
        tmp = out / f".{name}.tmp"
        tmp.write_text(content)
        os.replace(tmp, out / name)
    return out / "report.md"
