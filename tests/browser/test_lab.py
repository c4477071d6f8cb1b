"""JupyterLab in a real browser, as a learner uses it: open a lesson, Run All, move a slider.

Headless runs (nbval, `make notebooks`) never render a widget; only a browser shows that the
sliders exist and redraw their figure, and that lesson 15 opens with the kernel it needs."""
from __future__ import annotations

import base64
import time

import pytest

# Reads the open notebook from JupyterLab's own model (the app is exposed by the lab fixture).
NOTEBOOK_STATE = """
const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
if (!panel || !panel.content || !panel.sessionContext || !panel.content.model) { return null; }
const ctx = panel.sessionContext;
const kernel = ctx.session && ctx.session.kernel;
const toolbarName = panel.node.querySelector('.jp-Toolbar-kernelName');
const state = {path: panel.context.path, kernel: kernel ? kernel.name : null,
               display: ctx.kernelDisplayName, toolbar: toolbarName ? toolbarName.textContent : '',
               status: kernel ? kernel.status : null, busy: 0, cells: []};
const cells = panel.content.model.cells;
for (let i = 0; i < cells.length; i++) {
  const cell = cells.get(i);
  if (cell.type !== 'code') { continue; }
  const widget = panel.content.widgets[i];
  if (widget && widget.promptNode && widget.promptNode.textContent.includes('*')) { state.busy++; }
  state.cells.push({index: i, count: cell.executionCount, source: cell.sharedModel.getSource(),
    outputs: cell.outputs.toJSON().map(o => ({type: o.output_type, name: o.name || null,
      ename: o.ename || null, evalue: o.evalue || null,
      text: o.text ? [].concat(o.text).join('').slice(0, 1000) : null}))});
}
return state;
"""

# Scrolls the notebook to cell `index` and returns that cell's DOM node.
CELL_NODE = """
const done = arguments[arguments.length - 1];
const notebook = window.jupyterapp.shell.currentWidget.content;
notebook.activeCellIndex = arguments[0];
Promise.resolve(notebook.scrollToItem(arguments[0], 'start'))
  .then(() => setTimeout(() => done(notebook.widgets[arguments[0]].node), 500));
"""

CLEAR_OUTPUTS = """
const done = arguments[arguments.length - 1];
window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs').then(() => done(true));
"""

# Saves the notebook (to the scratch copy), shuts its kernel down and closes it.
CLOSE_LESSON = """
const done = arguments[arguments.length - 1];
const app = window.jupyterapp, panel = app.shell.currentWidget;
panel.context.save().then(() => panel.sessionContext.shutdown())
  .then(() => app.commands.execute('application:close-all')).then(() => done(true));
"""

NEWS_PROMPT = "notified about official Jupyter news"


def wait_for(predicate, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def open_lesson(driver, lab, name: str) -> dict:
    """Open lessons/<name> in JupyterLab and wait until its kernel is idle."""
    # ?reset: a fresh layout, without the tabs of an earlier test
    driver.get(f"{lab['base']}/lab/tree/lessons/{name}?reset&token={lab['token']}")

    def ready():
        state = driver.execute_script(NOTEBOOK_STATE)
        return state if state and state["path"].endswith(name) and state["status"] == "idle" \
            and state["display"] else None

    return wait_for(ready, 180, f"{name} to open with an idle kernel")


def run_all(driver, timeout: float) -> dict:
    """Run → Run All Cells, from the menu bar, then wait until nothing is queued or running.

    The committed outputs are cleared first, so that every output and execution count read
    afterwards comes from this run."""
    from selenium.webdriver.common.by import By

    driver.execute_async_script(CLEAR_OUTPUTS)
    cleared = driver.execute_script(NOTEBOOK_STATE)["cells"]
    assert not any(c["count"] or c["outputs"] for c in cleared), "outputs left before the run"
    menu = driver.find_element(By.XPATH, "//div[contains(@class, 'lm-MenuBar-itemLabel')]"
                                         "[normalize-space()='Run']")
    menu.click()
    wait_for(lambda: driver.find_elements(
        By.CSS_SELECTOR, "li.lm-Menu-item[data-command='runmenu:run-all']"), 10,
        "the Run menu").pop().click()
    wait_for(lambda: any(c["count"] for c in driver.execute_script(NOTEBOOK_STATE)["cells"]),
             120, "the first cell to run")
    quiet = []

    def finished():
        state = driver.execute_script(NOTEBOOK_STATE)
        idle = state["status"] == "idle" and state["busy"] == 0
        quiet.append(idle)
        return state if len(quiet) >= 3 and all(quiet[-3:]) else None

    return wait_for(finished, timeout, "Run All to finish", interval=2.0)


def close_lesson(driver, lab) -> None:
    """Stop the TFF helpers of the lab's kernels (they would outlive a kernel shut down from
    the browser), then save, shut down and close the notebook."""
    from fedutils.bridges.tff_workers import stop_workers

    stop_workers(children_of=lab["pid"])
    driver.execute_async_script(CLOSE_LESSON)


def errors_in(state: dict) -> list[str]:
    """Each error output, with what its cell printed before it."""
    return [f"cell {c['index']}: {o['ename']}: {o['evalue']}; it printed: "
            + "".join(p["text"] or "" for p in c["outputs"] if p["type"] == "stream")
            for c in state["cells"] for o in c["outputs"] if o["type"] == "error"]


def assert_no_news_prompt(driver):
    assert NEWS_PROMPT not in driver.find_element("tag name", "body").text, \
        "JupyterLab's news prompt is showing (see scripts/lab_overrides.json)"


def slider_moves_the_figure(driver, state: dict, name: str, screenshot) -> None:
    """Find the lesson's interact() slider, drag it, and check that the figure is redrawn."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    index = next(c["index"] for c in state["cells"] if "interact(" in c["source"])
    cell = driver.execute_async_script(CELL_NODE, index)
    handle = wait_for(lambda: cell.find_elements(By.CSS_SELECTOR, ".widget-slider .noUi-handle"),
                      60, "the slider to render")[0]

    # Read in one script call: the output area is cleared and redrawn while we poll, so an
    # element found in one WebDriver call can be gone (stale) by the next.
    def last(selector: str, prop: str) -> str:
        return driver.execute_script(
            "const n = arguments[0].querySelectorAll(arguments[1]);"
            "return n.length ? (n[n.length - 1][arguments[2]] || '') : '';", cell, selector, prop)

    def figure() -> bytes:
        src = last(".widget-output img, .jp-OutputArea img", "src")
        return base64.b64decode(src.split(",", 1)[1]) if src.startswith("data:image") else b""

    def readout() -> str:
        return last(".widget-readout", "textContent")

    before = wait_for(figure, 60, "the slider's first figure")
    value = readout()
    screenshot(driver, f"{name}-slider-before")
    ActionChains(driver).click_and_hold(handle).move_by_offset(90, 0).release().perform()
    wait_for(lambda: readout() != value, 30, "the slider's value to change")
    after = wait_for(lambda: (lambda img: img if img and img != before else None)(figure()),
                     120, "the figure to be redrawn")
    screenshot(driver, f"{name}-slider-after")
    assert after != before


@pytest.mark.parametrize("name", ["08_non_iid_data.ipynb", "02_core_principles.ipynb"])
def test_a_slider_lesson_runs_and_its_slider_redraws_the_figure(lab, browser, screenshot, name):
    open_lesson(browser, lab, name)
    state = run_all(browser, timeout=600)
    stem = name.removesuffix(".ipynb")
    screenshot(browser, f"{stem}-run-all")
    assert not errors_in(state), errors_in(state)
    assert all(c["count"] for c in state["cells"]), "Run All left cells unexecuted"
    assert_no_news_prompt(browser)
    slider_moves_the_figure(browser, state, stem, screenshot)
    close_lesson(browser, lab)


def test_lesson_15_opens_with_the_flower_kernel_and_runs(lab, browser, screenshot):
    state = open_lesson(browser, lab, "15_from_simulation_to_deployment.ipynb")
    screenshot(browser, "15-opened")
    assert state["kernel"] == "fl-course-modern", state["kernel"]
    assert "Keras 3 + Flower" in state["toolbar"], f"toolbar shows {state['toolbar']!r}"
    assert_no_news_prompt(browser)
    state = run_all(browser, timeout=1500)
    screenshot(browser, "15-run-all")
    assert not errors_in(state), errors_in(state)
    assert all(c["count"] for c in state["cells"]), "Run All left cells unexecuted"
    close_lesson(browser, lab)
