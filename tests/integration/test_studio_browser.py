"""The studio in headless Chromium (Playwright driving the system Chromium, no browser download),
against the real `tunery studio` command: the run list, a curve that grows while a tiny run trains
(then Stop: SIGTERM, a checkpoint, "interrupted"), compare, chat side by side, and a run started from
the config form (a typo first: the CLI's "did you mean") that trains to the end. Screenshots are kept
in pytest's tmp folder and their paths printed. TUNERY_SKIP_BROWSER=1 skips these tests, saying so."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from external_tools import chromium, require
from studio_helpers import make_studio_runs, tiny_form, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.skipif(
    os.environ.get("TUNERY_SKIP_BROWSER") == "1", reason="TUNERY_SKIP_BROWSER=1 asks to skip the tests that need a browser")]
SYSTEM_CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    executable = SYSTEM_CHROMIUM if Path(SYSTEM_CHROMIUM).exists() else require("chromium", chromium())
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the studio's browser tests need Playwright: pip install 'tunery[dev]' (or pip install "
                    "playwright; the system Chromium is used, no browser is downloaded). TUNERY_SKIP_BROWSER=1 "
                    "skips them.", pytrace=False)
    with sync_playwright() as pw:
        chrome = pw.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        yield chrome
        chrome.close()


@pytest.fixture(scope="module")
def studio(tmp_path_factory, tiny_model_dir):
    """`tunery studio --port 0` over two finished runs; yields (url, runs folder, project folder)."""
    folder = tmp_path_factory.mktemp("studio-browser")
    runs = make_studio_runs(folder, tiny_model_dir)
    proc = subprocess.Popen([sys.executable, "-m", "tunery.cli.main", "studio", "--runs", str(runs), "--port", "0"],
                            cwd=folder, stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    line = proc.stderr.readline()
    found = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
    assert found, f"the studio did not start: {line}{proc.stderr.read() if proc.poll() is not None else ''}"
    yield found.group(1), runs, folder
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    return tmp_path_factory.mktemp("studio-screenshots")


def screenshot(page, shots: Path, name: str, capsys) -> Path:
    path = shots / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 5000
    with capsys.disabled():
        print(f"\nscreenshot: {path}")
    return path


def series_points(page, chart_title: str) -> dict[str, int]:
    """{series label: number of points drawn} of the chart with that title."""
    return page.eval_on_selector_all(
        f'svg[data-title="{chart_title}"] path[data-series]',
        "paths => Object.fromEntries(paths.map(p => [p.dataset.series, +p.dataset.n]))")


def test_run_list(studio, page, shots, capsys):
    url, runs, _ = studio
    page.goto(url)
    page.wait_for_selector("#runs tr[data-run='alpha']")
    rows = page.eval_on_selector_all("#runs tr[data-run]", "rows => rows.map(r => r.dataset.run)")
    assert sorted(rows) == ["alpha", "beta"]
    alpha = page.locator("#runs tr[data-run='alpha']")
    assert alpha.locator("[data-status]").inner_text() == "finished"
    assert "tuned: exact 0.750" in alpha.inner_text() and "train.jsonl" in alpha.inner_text()
    screenshot(page, shots, "run-list", capsys)
    page.click("#runs tr[data-run='alpha'] a")
    page.wait_for_selector("svg[data-title='grader scores']")
    assert series_points(page, "training loss") == {"loss": 8}
    assert series_points(page, "validation loss") == {"val_loss": 4}
    assert series_points(page, "grader scores") == {"exact": 2}
    assert page.locator("table.eval[data-run='alpha'] tr").count() == 3
    screenshot(page, shots, "run-page", capsys)
    page.goto(url.rstrip("/") + page.locator("#report-link").get_attribute("href"))
    assert page.inner_text("#report") == "eval report of alpha"


def test_compare_two_runs(studio, page, shots, capsys):
    url, _, _ = studio
    page.goto(url)
    page.check("#runs tr[data-run='alpha'] .pick")
    page.check("#runs tr[data-run='beta'] .pick")
    page.click("#compare-btn")
    page.wait_for_selector("#config-diff tr[data-key='training.lr']")
    names = page.locator("#config-diff th").all_inner_texts()[1:]  # the list's order: newest first
    lr = page.locator("#config-diff tr[data-key='training.lr'] td").all_inner_texts()
    assert sorted(names) == ["alpha", "beta"] and lr[0] == "training.lr"
    assert dict(zip(names, lr[1:])) == {"alpha": "0.001", "beta": "0.005"}
    assert page.locator("#config-diff tr[data-key='lora.rank']").count() == 0  # equal keys are not listed
    assert series_points(page, "training loss") == {"alpha": 8, "beta": 8}
    assert series_points(page, "validation loss") == {"alpha": 4, "beta": 4}
    assert page.locator("table.eval[data-run='alpha'] tr").count() == 3
    screenshot(page, shots, "compare", capsys)


def test_chat_side_by_side(studio, page, shots, capsys, tiny_model_dir):
    url, _, _ = studio
    prompt = "Ben Kato needs a room in Oslo for 2 nights."
    page.goto(url + "#/chat/alpha,beta")
    page.wait_for_selector(".chat-run[value='alpha']:checked")
    page.fill("#prompt", prompt)
    page.fill("#max-tokens", "8")
    page.click("#send")
    page.wait_for_selector(".answer >> nth=2", timeout=240_000)
    shown = page.eval_on_selector_all(".answer", "els => els.map(e => [e.dataset.label, e.querySelector('pre').textContent])")
    order = [label for label, _ in shown[:2]]  # the run list's order: newest first
    assert sorted(order) == ["alpha", "beta"] and shown[2][0] == f"base: {tiny_model_dir.name}"
    expected = httpx.post(url + "api/chat", json={"prompt": prompt, "runs": order, "max_new_tokens": 8},
                          timeout=240).json()["answers"]
    assert shown == [[a["label"], a["answer"]] for a in expected]  # the greedy answers of each model
    assert shown[0][1] != shown[1][1]
    screenshot(page, shots, "chat", capsys)


def test_live_curve_grows_while_training_then_stop(studio, page, shots, capsys, tiny_model_dir):
    url, runs, folder = studio
    form = tiny_form(folder, tiny_model_dir, "live", steps=3000, save_every=500, eval_every=10)
    job = httpx.post(url + "api/train", json={"values": form}, timeout=30).json()
    assert job["alive"], job
    page.goto(url + "#/run/live")
    # (the page is drawn again when the status changes from starting to running: read while it is there)
    first = wait_for(lambda: series_points(page, "training loss").get("loss", 0), what="the first point", every=0.5)
    later = wait_for(lambda: (n := series_points(page, "training loss").get("loss", 0)) >= first + 5 and n,
                     what="the curve to grow", every=0.5, timeout=120)
    assert later >= first + 5 and page.locator("[data-status]").first.inner_text() == "running"
    assert series_points(page, "validation loss")["val_loss"] >= 1
    assert re.fullmatch(r"\d+/3000", page.locator("#fig-step").inner_text())  # the step while it trains
    screenshot(page, shots, "live-curve", capsys)
    page.click("#stop-btn")
    page.wait_for_selector("[data-status='interrupted']", timeout=120_000)
    page.wait_for_selector("#resume-btn", timeout=60_000)  # once the process has exited (143)
    assert "checkpoint written" in page.locator("#log").inner_text()
    screenshot(page, shots, "stopped", capsys)


def test_run_started_from_the_form_finishes(studio, page, shots, capsys, tiny_model_dir):
    url, runs, folder = studio
    page.goto(url + "#/new")
    page.wait_for_selector("input[name='training.lr']")
    for key, value in tiny_form(folder, tiny_model_dir, "formrun", steps=6, save_every=3).items():
        if page.locator(f"select[name='{key}']").count():
            page.select_option(f"select[name='{key}']", value)
        else:
            page.fill(f"input[name='{key}']", value)
    page.fill("#extra", "training.learning_rate=1e-3")
    page.click("#start-btn")
    error = page.wait_for_selector("#form-result .error").inner_text()
    assert "unknown key 'training.learning_rate' (command line): did you mean training.lr?" in error
    screenshot(page, shots, "form-error", capsys)
    page.fill("#extra", "")
    page.click("#check-btn")
    page.wait_for_selector("#form-result .ok")
    page.click("#start-btn")
    page.wait_for_url(re.compile(r"#/run/formrun$"))
    page.wait_for_selector("[data-status='finished']", timeout=300_000)
    assert page.locator("#fig-step").inner_text() == "6/6"
    assert series_points(page, "training loss")["loss"] == 6
    assert (runs / "formrun" / "adapter" / "adapter_config.json").is_file()
    screenshot(page, shots, "form-run-finished", capsys)
