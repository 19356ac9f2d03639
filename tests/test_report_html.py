"""report/index.html rendered by headless Chromium (Debian's package): the page shows what report.md says, its
plots are the report's own files embedded, nothing is fetched from anywhere, tables sort, and a screenshot is kept
in test-artifacts/ for a person to look at."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import ROOT, run_script, setting_folder

ARTIFACTS = ROOT / "test-artifacts"


def chromium() -> str:
    found = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI must render the HTML report: install Debian's chromium (.ci/run does)")
        pytest.skip("no headless Chromium here (apt-get install chromium)")
    return found


def render(page: Path, tmp_path: Path, fragment: str = "") -> str:
    """The page's DOM after its scripts ran."""
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
         "--dump-dom", page.resolve().as_uri() + fragment],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0 and "<table" in result.stdout, result.stderr[-2000:]
    return result.stdout


class Page(HTMLParser):
    """The rendered page's tables (cell texts), images (src) and visible text."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.tables, self.images, self.text, self._cell = [], [], [], None
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs))

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        self.text.append(data)


def markdown_tables(text: str) -> list[list[list[str]]]:
    tables, current = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            if not re.fullmatch(r"\|( --- \|)+", line):
                current.append([cell.strip().replace("**", "").replace("`", "") for cell in line.strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    return tables


@pytest.mark.slow
def test_the_page_shows_what_the_markdown_report_says(robust_sweep_report, tmp_path):
    _, report, markdown = robust_sweep_report
    page = report / "index.html"
    source = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", source)  # nothing fetched: no server, no network
    rendered = Page(render(page, tmp_path))
    assert rendered.tables == markdown_tables(markdown)  # every table, every cell, in order
    images = re.findall(r"!\[(.*?)\]\((.+?)\)", markdown)
    assert [image["alt"] for image in rendered.images] == [alt for alt, _ in images]
    for image, (_, path) in zip(rendered.images, images, strict=True):
        assert base64.b64decode(image["src"].split(",", 1)[1]) == (report / path).read_bytes()
    text = " ".join("".join(rendered.text).split())
    recommendation = next(line for line in markdown.splitlines() if "is the most accurate" in line)
    assert " ".join(recommendation.replace("**", "").split()) in text
    assert "Robustness to corruption" in text and "Most frequent confusions" in text


@pytest.mark.slow
def test_a_column_heading_sorts_its_table(robust_sweep_report, tmp_path):
    _, report, _ = robust_sweep_report
    board = pd.read_csv(setting_folder(report) / "leaderboard.csv")
    heading = Page(render(report / "index.html", tmp_path)).tables[0][0]
    column = heading.index("top-1 %")
    rows = Page(render(report / "index.html", tmp_path, f"#sort=0:{column}")).tables[0][1:]
    assert [row[1] for row in rows] == board.sort_values("top1_mean")["backbone"].tolist()  # ascending
    rows = Page(render(report / "index.html", tmp_path, f"#sort=0:{column}:desc")).tables[0][1:]
    assert [row[1] for row in rows] == board.sort_values("top1_mean", ascending=False)["backbone"].tolist()


@pytest.mark.slow
def test_a_screenshot_of_the_page_is_kept(robust_sweep_report, tmp_path):
    _, report, _ = robust_sweep_report
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,3000",
         (report / "index.html").resolve().as_uri()],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1280, 3000)
        assert len(np.unique(np.asarray(image.convert("L")))) > 20  # drawn, not a blank page


@pytest.mark.slow
def test_one_backbone_with_few_classes_reads_sensibly(digits_sweep, tmp_path):
    """One backbone: no agreement heatmap and no 'no other backbone is tied'; a run with five classes or fewer
    (no top-5): no top-5 column."""
    runs = tmp_path / "runs"
    for source in sorted(digits_sweep.glob("mobilenet_v3_large-s*")):
        target = runs / source.name
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("best.pt", "robustness.json"))
        metrics = json.loads((target / "metrics.json").read_text())
        (target / "metrics.json").write_text(json.dumps({**metrics, "top5": None}))
    out = tmp_path / "report"
    result = run_script("report.py", "--runs", runs, "--out", out)
    assert result.returncode == 0, result.stderr
    markdown = (out / "report.md").read_text()
    assert "error_consistency.png" not in markdown and not (setting_folder(out) / "error_consistency.png").exists()
    assert "No other backbone" not in markdown and "tied" not in markdown.split("is the most accurate")[1][:200]
    assert "top-5" not in markdown
    assert Page(render(out / "index.html", tmp_path)).tables[0][0][:4] == ["rank", "backbone", "seeds", "top-1 %"]
