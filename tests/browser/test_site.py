"""The course site (`make site`, build/site/) in a real browser, from the file system, offline:
pages load with their images and formulas, their links lead somewhere, search finds lessons."""
from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "build" / "site"

# Every image on the page once loading has settled: [src, loaded?].
IMAGES = "return Array.from(document.images).map(i => [i.src, i.complete && i.naturalWidth > 0]);"
LINKS = """return Array.from(document.querySelectorAll('a[href]')).map(a => a.href);"""


@pytest.fixture(scope="module", autouse=True)
def site():
    if not (SITE / "index.html").exists():
        pytest.fail("no site to test: run `make site` first (make test-browser does)")


def load(driver, page: str, query: str = ""):
    driver.get((SITE / page).as_uri() + query)
    deadline = time.monotonic() + 60
    while driver.execute_script("return document.readyState") != "complete":
        assert time.monotonic() < deadline, f"{page} did not finish loading"
        time.sleep(0.5)


def lesson_with_plots_and_formulas() -> str:
    """The first lesson page that shows both a plot and a formula."""
    for page in sorted(SITE.glob("[0-9][0-9]_*.html")):
        text = page.read_text()
        if 'src="_images/' in text and 'class="math' in text:
            return page.stem
    pytest.fail("no lesson page with both a plot and a formula")


def broken_images(driver) -> list[str]:
    return [src for src, loaded in driver.execute_script(IMAGES) if not loaded]


def broken_links(driver) -> list[str]:
    """Links into the site whose file is missing, or whose #anchor is not on the target page."""
    broken = []
    for href in set(driver.execute_script(LINKS)):
        url = urlsplit(href)
        if url.scheme != "file":
            continue                       # the web (papers, Colab, GitHub): not offline
        target = Path(unquote(url.path))
        if not target.is_file():
            broken.append(href)
        elif url.fragment and f'id="{url.fragment}"' not in target.read_text(errors="replace"):
            broken.append(href)
    return sorted(broken)


def test_the_index_lists_both_parts_and_its_links_work(browser, screenshot):
    load(browser, "index.html")
    screenshot(browser, "site-index")
    text = browser.find_element("tag name", "body").text
    assert "Part I · The slides" in text and "Part II · Beyond the slides" in text
    assert "Fourteen" not in text
    assert not broken_images(browser), broken_images(browser)
    assert not broken_links(browser), broken_links(browser)
    lessons = sorted(p.stem for p in (ROOT / "lessons").glob("[0-9][0-9]_*.ipynb"))
    hrefs = {Path(urlsplit(h).path).stem for h in browser.execute_script(LINKS)}
    assert set(lessons) <= hrefs, set(lessons) - hrefs


def test_a_lesson_page_shows_its_plots_and_formulas_and_links_to_colab(browser, screenshot):
    lesson = lesson_with_plots_and_formulas()
    load(browser, "index.html")
    browser.find_element("css selector", f"article a[href='{lesson}.html']").click()
    deadline = time.monotonic() + 60
    while not browser.execute_script(
            "return window.MathJax && MathJax.Hub && MathJax.Hub.queue.pending === 0 "
            "&& document.querySelectorAll('.math .MathJax').length > 0"):
        assert time.monotonic() < deadline, "MathJax did not typeset the formulas"
        time.sleep(0.5)
    assert browser.current_url.endswith(f"{lesson}.html")
    screenshot(browser, "site-lesson")
    for name, selector in (("formula", ".math .MathJax"), ("plot", "img[src*='_images/']")):
        browser.execute_script("document.querySelector(arguments[0]).scrollIntoView()", selector)
        screenshot(browser, f"site-lesson-{name}")
    images = browser.execute_script(IMAGES)
    assert any("_images/" in src for src, _ in images), "the lesson's plots are on the page"
    assert not broken_images(browser), broken_images(browser)
    assert not broken_links(browser), broken_links(browser)
    hrefs = browser.execute_script(LINKS)
    assert any(h.startswith("https://colab.research.google.com/github/")
               and h.endswith(f"/lessons/{lesson}.ipynb") for h in hrefs), "Colab launch button"
    assert any(h.endswith(f"_sources/{lesson}.ipynb") for h in hrefs), "notebook download"


def test_search_finds_lessons(browser, screenshot):
    load(browser, "search.html", "?q=FedProx")
    deadline = time.monotonic() + 60
    while not browser.find_elements("css selector", "#search-results ul li, ul.search li"):
        assert time.monotonic() < deadline, "search found nothing for FedProx"
        time.sleep(0.5)
    screenshot(browser, "site-search")
    found = browser.find_element("css selector", "#search-results").text
    assert "Non-IID" in found, found[:500]
