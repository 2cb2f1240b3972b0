"""The HTML report in a real headless Chromium: hostile model text stays inert text, figures
render, transcripts and survey blocks are there. A control page proves the detector can fire."""

from __future__ import annotations

import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from debatelab.analysis import aggregate, load
from debatelab.analysis.report import SURVEY_LABEL, build_report
from debatelab.config import load_config
from debatelab.experiment import run_experiment
from debatelab.llm.base import GenerateRequest
from debatelab.llm.scripted import ScriptedLLM

from conftest import make_bank, write_config

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
HOSTILE = [
    "<script>document.body.setAttribute('data-pwned','script')</script>",
    "<img src=x onerror=\"document.body.setAttribute('data-pwned','img')\">",
    "\"><svg onload=\"document.body.setAttribute('data-pwned','svg')\">",
    "<script>alert('pwned')</script>",
]
REPETITIONS = 2
SAFE_TAGS = {"html", "head", "meta", "title", "style", "body", "header", "nav", "a", "section", "h1", "h2", "h3",
             "h4", "p", "dl", "dt", "dd", "pre", "details", "summary", "figure", "img", "figcaption", "table",
             "thead", "tbody", "tr", "th", "td", "ol", "li", "span", "div"}


class _Tags(HTMLParser):
    """Every element name, attribute name and src/href value of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()
        self.attrs: set[str] = set()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.names.add(tag)
        self.attrs |= {name for name, _ in attrs}
        self.urls += [value or "" for name, value in attrs if name in ("src", "href")]


def _hostile_reply(request: GenerateRequest) -> str:
    return "I disagree. " + " ".join(HOSTILE) + " That is all."


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real scripted run whose every reply is hostile, and its report."""
    base = tmp_path_factory.mktemp("report")
    bank = make_bank(base / "bank.jsonl")
    cfg = load_config(write_config(base / "hostile.yaml", personas=str(bank), repetitions=REPETITIONS))
    run_experiment(cfg, base / "run", llm=ScriptedLLM(reply_fn=_hostile_reply))
    return base / "run", build_report([base / "run"], base / "out")


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        message = f"{CHROMIUM} is missing (apt-get install chromium)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _open(browser, url: str):
    """A page with its console errors and dialogs recorded, loaded from ``url``."""
    page = browser.new_page()
    events: dict[str, list[str]] = {"errors": [], "dialogs": []}
    page.on("console", lambda m: events["errors"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: events["errors"].append(str(e)))
    page.on("dialog", lambda d: (events["dialogs"].append(d.message), d.dismiss()))
    page.goto(url, wait_until="load")
    return page, events


def _pwned(page) -> list[str | None]:
    return page.eval_on_selector_all("[data-pwned]", "els => els.map(e => e.getAttribute('data-pwned'))")


def test_report_in_chromium_is_inert_and_complete(report, browser, tmp_path):
    run_dir, html = report
    page, events = _open(browser, html.as_uri())
    try:
        page.wait_for_timeout(300)  # give any (wrongly) injected handler time to fire
        assert _pwned(page) == []
        assert events["dialogs"] == []
        assert [e for e in events["errors"] if "Content Security Policy" not in e] == []
        # hostile strings are shown literally as text, and no hostile element exists
        page.eval_on_selector_all("details.debate", "els => els.forEach(e => e.open = true)")
        text = page.inner_text("body")
        for s in HOSTILE:
            assert s in text
        assert page.locator("script").count() == 0
        assert page.locator("svg").count() == 0
        assert page.locator("img[onerror]").count() == 0
        # every image is an embedded figure that decoded
        widths = page.eval_on_selector_all("img", "els => els.map(e => [e.src.slice(0, 22), e.naturalWidth])")
        assert widths and all(src == "data:image/png;base64," and w > 0 for src, w in widths)
        _assert_transcripts(page, load(run_dir))
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
    finally:
        page.close()


def _assert_transcripts(page, run) -> None:
    assert page.locator("details.debate").count() == len(run.debates) == REPETITIONS
    ids = page.eval_on_selector_all("details.debate", "els => els.map(e => e.dataset.debateId)")
    assert sorted(ids) == sorted(run.debates["debate_id"])
    assert page.locator("li.turn").count() == len(run.turns)
    blocks = page.locator("li.survey")
    per_debate = run.surveys.groupby("debate_id")["iteration"].nunique().sum()
    assert blocks.count() == per_debate
    for i in range(blocks.count()):
        assert SURVEY_LABEL in blocks.nth(i).inner_text()
    # a survey block and a turn look different
    turn_bg = page.eval_on_selector("li.turn", "e => getComputedStyle(e).backgroundColor")
    survey_bg = page.eval_on_selector("li.survey", "e => getComputedStyle(e).backgroundColor")
    assert turn_bg != survey_bg
    # order in the first debate: survey 0, then turns, with each survey after the turn closing its cycle
    kinds = page.eval_on_selector(
        "details.debate", "d => [...d.querySelectorAll('ol.transcript > li')].map(li => li.className.split(' ')[0] "
                          "+ ':' + (li.dataset.iteration ?? ''))")
    assert kinds[0] == "survey:0"
    survey_positions = [i for i, k in enumerate(kinds) if k.startswith("survey")]
    n_agents = int(run.debates["n_agents"].iloc[0])
    assert survey_positions == [i * (n_agents + 1) for i in range(len(survey_positions))]


def test_control_unescaped_page_is_pwned(browser, tmp_path):
    """The same strings rendered raw, without CSP, do run: the detector above can fail."""
    page_file = tmp_path / "control.html"
    page_file.write_text("<!DOCTYPE html><html><body><p>" + " ".join(HOSTILE[:3]) + "</p></body></html>")
    page, events = _open(browser, page_file.as_uri())
    try:
        page.wait_for_function("document.body.hasAttribute('data-pwned')", timeout=5000)
        assert _pwned(page)
    finally:
        page.close()


def test_report_file_is_static_and_summary_matches(report):
    run_dir, html = report
    text = html.read_text(encoding="utf-8")
    assert ('<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
            "style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'\">") in text
    assert re.search(r"<\s*script", text, re.IGNORECASE) is None
    assert "&lt;script&gt;" in text
    tags = _Tags()
    tags.feed(text)
    assert tags.names <= SAFE_TAGS, tags.names - SAFE_TAGS
    assert not [a for a in tags.attrs if a.startswith("on")]
    assert all(url.startswith(("data:image/png;base64,", "#")) for url in tags.urls)  # nothing external
    out = html.parent
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["01-hostile-attitudes.png",
                                                                   "01-hostile-attitudes.svg"]
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["run"]) == {"hostile"} and set(summary["measure"]) == {"greedy"}
    expected = aggregate(load(run_dir).surveys)
    pd.testing.assert_frame_equal(summary.drop(columns=["run", "measure"]), expected, check_dtype=False)


def test_several_runs_get_an_overlay_only_when_asked(report, tmp_path):
    run_dir, _ = report
    plain = build_report([run_dir, run_dir], tmp_path / "plain").read_text(encoding="utf-8")
    assert "Overlay:" not in plain and plain.count('src="data:image/png;base64,') == 2
    html = build_report([run_dir, run_dir], tmp_path / "out", overlay=True)
    text = html.read_text(encoding="utf-8")
    assert "Overlay: hostile #1 vs hostile #2" in text
    assert text.count('src="data:image/png;base64,') == 3
    assert (tmp_path / "out/figures/overlay-attitudes.svg").is_file()
    assert set(pd.read_csv(tmp_path / "out/summary.csv")["run"]) == {"hostile #1", "hostile #2"}
