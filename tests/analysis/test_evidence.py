"""`analysis evidence`: the published pairs and their pooling, and the report end to end (md, self-contained
html, figures) with numbers that match a direct read of the fork's logs."""

from __future__ import annotations

import base64
import math
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis.evidence import evidence_run_sd, gather_evidence, verdict_sentences
from analysis.pairs import matched_pairs, pool_pairs
from analysis.published import published_frame

SEED_REPOS = ("CoinCheung/DeepLab-v3-plus-cityscapes", "konami86/DeepLab-v3-plus-cityscapes-Res50")
POOLED = {  # (source, crop, iterations, weights): the single-scale DeepLabV3+ pairs of final models
    ("mmsegmentation", "512x1024", 40000, "source default"),
    ("mmsegmentation", "512x1024", 80000, "source default"),
    ("mmsegmentation", "769x769", 40000, "source default"),
    ("mmsegmentation", "769x769", 80000, "source default"),
    ("mmsegmentation", "512x1024", 80000, "torchvision ImageNet"),
    ("PaddleSeg", "512x1024", 80000, "source default"),
}


def test_matched_pairs_are_like_for_like_and_say_why_not_pooled() -> None:
    published = published_frame()
    pairs = matched_pairs(published, run_sd=0.4)
    pooled = pairs[pairs.pooled]
    assert {(r.source, r.crop, int(r.iterations), r.weights) for r in pooled.itertuples()} == POOLED
    assert (pooled["eval"] == "single-scale").all() and (pooled.selection_r50 == "final").all()
    for r in pairs.itertuples():  # Δ is the two rows' difference, and they match on every other column
        rows = published[(published.source == r.source) & (published["eval"] == r.eval) & (published.crop == r.crop)]
        rows = rows[(rows.iterations == r.iterations) | (rows.iterations.isna() & pd.isna(r.iterations))]
        assert r.miou_r101 - r.miou_r50 == pytest.approx(r.delta)
        assert {r.miou_r50, r.miou_r101} <= set(rows.miou)
        assert r.ci_high - r.delta == pytest.approx(1.959964 * math.sqrt(2) * 0.4)
    seed = pairs[pairs.source == "seed fork README (konami86)"].iloc[0]
    assert not seed.pooled and "best-of-141-on-val" in seed.not_pooled and "unknown" in seed.not_pooled
    assert pairs[pairs["eval"] != "single-scale"].not_pooled.str.startswith(("multi-scale", "PSPNet")).all()
    # a group with two res50 rows is not a pair: which one would it be?
    twice = pd.concat([published, published[published.miou == 79.61].assign(miou=79.0)])
    assert len(matched_pairs(twice, 0.4)) == len(pairs) - 1


def test_pooling_with_equal_variances_is_the_mean_and_widens_with_spread() -> None:
    pairs = matched_pairs(published_frame(), run_sd=0.4)
    deltas = pairs[pairs.pooled].delta.to_numpy()
    pooled = pool_pairs(pairs, 0.4)
    assert pooled.k == 6 and pooled.fixed == pytest.approx(deltas.mean())
    half = 1.959964 * math.sqrt(2) * 0.4 / math.sqrt(6)
    assert pooled.fixed_ci == pytest.approx((deltas.mean() - half, deltas.mean() + half), abs=1e-6)
    assert pooled.q == pytest.approx(((deltas - deltas.mean()) ** 2).sum() / (2 * 0.4**2))
    tight = pool_pairs(pairs, 0.1)  # a stated noise far below the pairs' scatter: heterogeneity shows
    assert tight.tau2 > 0 and tight.i2 > 0.5 and tight.q_p < 0.05
    assert tight.random_ci[1] - tight.random_ci[0] > tight.fixed_ci[1] - tight.fixed_ci[0]
    assert tight.scatter_ci == pytest.approx(pooled.scatter_ci)  # the scatter interval ignores the stated sd


def test_the_verdict_quotes_the_logs_and_the_protocols() -> None:
    ev = gather_evidence(run_sd=0.3)
    conclusion, *lines = verdict_sentences(ev, margin=0.5)
    assert "best-of-141-on-val" in lines[0] and "78.40 after iteration 59100" in lines[0] and "+0.08" in lines[0]
    assert (
        "77.75 after 60000" in lines[1] and "77.79 after 41000" in lines[1] and "0.73 and 0.69 points below" in lines[1]
    )
    assert f"±{1.959964 * math.sqrt(2) * 0.3:.2f} points (run-to-run sd 0.30 assumed)" in lines[1]
    assert "res101 leads by about 0.6 points" in conclusion and "not shown" in conclusion
    assert ev.run_sd_source == "--run-sd"
    assert (ev.pairs.ci_high - ev.pairs.delta).to_numpy() == pytest.approx(1.959964 * math.sqrt(2) * 0.3)
    assert evidence_run_sd(ev.biases) == pytest.approx(math.sqrt(sum(b.noise.sigma**2 for b in ev.biases.values()) / 2))


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("evidence")
    done = subprocess.run(
        [sys.executable, "-m", "analysis", "evidence", "--out", str(out)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert f"evidence report written to {out / 'report.md'}" in done.stdout
    return out


def test_the_report_matches_a_direct_read_of_the_logs(report: Path) -> None:
    text = (report / "report.md").read_text()
    section = text.split("## The seed fork's own logs")[1].split("\n## ")[0]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("| ")]
    rows = {row[0]: row for row in cells}
    # the README table of ../shared/reference/seed-fork-logs (a direct regex read of the two logs)
    assert rows["slurm-11413.out"][2:9] == ["141", "7800", "77.75", "78.40", "59100", "77.58", "0.56"]
    assert rows["slurm-11311.out"][2:9] == ["110", "300", "77.79", "78.02", "38600", "77.51", "0.40"]
    assert rows["slurm-11413.out"][-1] == "best-of-141-on-val"
    for name in ("fork_curves", "fork_loss", "forest"):
        for suffix in (".png", ".svg"):
            assert (report / "figures" / f"{name}{suffix}").stat().st_size > 1000
        assert f"(figures/{name}.png)" in text
    published = text.split("## The published table")[1]
    assert published.count("| best-of-141-on-val |") == 1 and published.count("| unknown |") >= 3


def test_the_report_opens_with_its_conclusion_and_tells_every_row_s_note(report: Path) -> None:
    text = (report / "report.md").read_text()
    head = text.split("\n## ")[0]
    conclusion = verdict_sentences(gather_evidence(), margin=0.5)[0]
    assert head.splitlines()[2] == f"**Conclusion.** {conclusion}"
    header, _, *rows = text.split("## The published table")[1].split("\n\n")[1].splitlines()
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert "note" in columns and "source" in columns
    table = pd.DataFrame([[c.strip() for c in r.strip("|").split("|")] for r in rows], columns=columns)
    march = table[table.note.str.contains("March-2020 evaluator")]
    assert len(march) == 1 and march.miou.iloc[0] == "70.54"  # the row that reads as a contradiction without it
    names = table.groupby("url").source.unique()  # one name per source; the seed fork's documents by owner
    seed, fork = (f"https://github.com/{repo}" for repo in SEED_REPOS)
    assert list(names.pop(seed)) == ["seed README (CoinCheung)"]
    assert sorted(names.pop(fork)) == [
        "seed fork README (konami86)",
        "seed fork log slurm-11311.out (konami86)",
        "seed fork log slurm-11413.out (konami86)",
    ]
    assert names.map(len).eq(1).all() and "seed repository README" not in text and "outreach" not in text


def test_the_html_page_is_self_contained_and_says_the_same(report: Path) -> None:
    page = (report / "report.html").read_text()
    text = (report / "report.md").read_text()
    assert page.startswith("<!DOCTYPE html>") and "figures/" not in page
    inlined = re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', page)
    names = re.findall(r"\(figures/(\w+)\.png\)", text)
    assert len(inlined) == len(names) == 3
    for name, data in zip(names, inlined, strict=True):
        assert base64.b64decode(data) == (report / "figures" / f"{name}.png").read_bytes()
    for line in text.split("## Verdict")[1].split("\n## ")[0].splitlines():
        if line.startswith("- "):
            plain = line[2:].split("`")[0].replace("&", "&amp;").replace("<", "&lt;")
            assert plain in page
    assert page.count("<tr>") == text.count("\n|") - text.count("\n|---")


def test_an_unwritable_out_is_one_line(tmp_path: Path) -> None:
    from analysis.errors import AnalysisError
    from analysis.evidence_report import write_evidence

    (tmp_path / "file").write_text("")
    with pytest.raises(AnalysisError, match=r"evidence: cannot write .*file/out"):
        write_evidence(tmp_path / "file" / "out")
