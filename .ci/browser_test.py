"""Run notebooks in a real JupyterLab in headless Chromium and move one control of every widget.

usage: python .ci/browser_test.py notebooks/00_data.ipynb [...]      (what `make test-browser` runs)

For each notebook: start JupyterLab on 127.0.0.1 (a temporary settings folder; windowing off so every cell is in
the page), open the notebook, run all cells through JupyterLab's own command, and fail on any error output. Then,
for every widget the page shows, change its first control as a user would (a slider by the arrow key on its handle,
a dropdown by picking the next option, a checkbox by clicking) and wait until the widget's picture changes. Some
bugs exist only here: the browser snaps slider values to the slider's steps, and a callback that raises only shows
its traceback inside the widget. Needs Debian's `chromium` and `chromium-driver` and `selenium` (pip).
Nothing is saved: autosave is off, and a notebook changed on disk during the run is put back and reported.
"""
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import JavascriptException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 300  # seconds for a whole notebook (its CPU budget is 90 s; the browser and server add some)
REDRAW_TIMEOUT = 30  # seconds for a widget's picture to change after its control moved
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
CONTROLS = ".noUi-handle, select, input[type=checkbox]"  # the controls a user moves: slider, dropdown, checkbox

# JavaScript helpers, run in the page through window.jupyterapp (LabApp.expose_app_in_browser).
JS_PANEL = "const w = window.jupyterapp && window.jupyterapp.shell.currentWidget; "
JS_KERNEL_STATUS = JS_PANEL + """
const k = w && w.context && w.context.sessionContext.session && w.context.sessionContext.session.kernel;
return k ? k.status : null;"""
JS_CELLS = JS_PANEL + """
return w.content.widgets.filter(c => c.model.type === 'code').map(c => ({
    count: c.model.executionCount,
    errors: c.model.outputs.toJSON().filter(o => o.output_type === 'error').map(o => o.ename + ': ' + o.evalue),
    source: c.model.sharedModel.getSource().slice(0, 60)}));"""
JS_RUN_ALL = JS_PANEL + "window.jupyterapp.commands.execute('notebook:run-all-cells'); return true;"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float, what: str, interval: float = 0.25):
    """Poll `condition()` until it returns something truthy; raise TimeoutError naming `what` otherwise."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            value = condition()
        except (JavascriptException, WebDriverException, OSError):
            value = None
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def start_lab(settings: Path, port: int, token: str) -> subprocess.Popen:
    tracker = settings / "@jupyterlab" / "notebook-extension"
    tracker.mkdir(parents=True)
    (tracker / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    docmanager = settings / "@jupyterlab" / "docmanager-extension"  # no autosave: the files on disk stay as they are
    docmanager.mkdir(parents=True)
    (docmanager / "plugin.jupyterlab-settings").write_text(json.dumps({"autosave": False}))
    log = open(settings / "lab.log", "w")
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", f"--port={port}",
           "--ip=127.0.0.1", f"--ServerApp.token={token}", f"--ServerApp.root_dir={ROOT}",
           "--LabApp.expose_app_in_browser=True", f"--LabApp.user_settings_dir={settings}",
           f"--LabApp.workspaces_dir={settings / 'workspaces'}", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")), options=options)


def picture_digest(root) -> str:
    """A digest of every picture inside one widget (matplotlib outputs arrive as <img> data URLs)."""
    sources = [img.get_attribute("src") or "" for img in root.find_elements(By.CSS_SELECTOR, "img")]
    return hashlib.sha1("".join(sources).encode()).hexdigest() if sources else ""


def move_first_control(driver, root) -> str:
    """Change the widget's first control as a user would; returns what was done."""
    controls = root.find_elements(By.CSS_SELECTOR, CONTROLS)
    if not controls:
        raise AssertionError("widget has no slider, dropdown or checkbox to move")
    control = controls[0]
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", control)
    if control.tag_name == "select":
        menu = Select(control)
        index = (len(menu.options) and [o.is_selected() for o in menu.options].index(True)) if menu.options else 0
        menu.select_by_index((index + 1) % len(menu.options))
        return f"dropdown -> {menu.first_selected_option.text!r}"
    if control.get_attribute("type") == "checkbox":
        control.click()
        return f"checkbox -> {control.is_selected()}"
    control.click()
    control.send_keys(Keys.ARROW_RIGHT)
    return f"slider -> {control.get_attribute('aria-valuenow')}"


def interactive_widget_outputs(nb: dict) -> list[str]:
    """The model ids of the widget views the notebook file shows, leaving out plain Output widgets (a live plot
    area: no control to move), as far as the saved widget state says which is which."""
    state = nb.get("metadata", {}).get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    models = state.get("state", {})
    views = [o["data"][WIDGET_MIME]["model_id"] for c in nb["cells"] if c["cell_type"] == "code"
             for o in c.get("outputs", []) if WIDGET_MIME in o.get("data", {})]
    return [v for v in views if models.get(v, {}).get("model_name") != "OutputModel"]


def check_notebook(driver, port: int, token: str, path: Path) -> list[str]:
    """Run one notebook in the page and exercise its widgets; returns the failures (empty when all is well)."""
    failures = []
    rel = path.resolve().relative_to(ROOT).as_posix()
    driver.get(f"http://127.0.0.1:{port}/lab/tree/{rel}?token={token}&reset")
    wait_for(lambda: driver.execute_script(JS_KERNEL_STATUS) == "idle", 120, f"{rel}: kernel ready")
    start = time.monotonic()
    driver.execute_script(JS_RUN_ALL)

    def finished():
        cells = driver.execute_script(JS_CELLS)
        done = all(c["count"] for c in cells) and driver.execute_script(JS_KERNEL_STATUS) == "idle"
        return cells if done or any(c["errors"] for c in cells) else None

    cells = wait_for(finished, RUN_TIMEOUT, f"{rel}: all cells run")
    print(f"{rel}: {len(cells)} code cells run in {time.monotonic() - start:.1f} s")
    for cell in cells:
        for error in cell["errors"]:
            failures.append(f"{rel}: cell {cell['source']!r}: {error}")
    if failures:
        return failures

    expected = len(interactive_widget_outputs(json.loads(path.read_text())))
    # A widget's output area is a panel holding a `.jupyter-widgets` view; its own pictures sit in nested areas.
    roots = driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output")
    roots = [r for r in roots if r.find_elements(By.CSS_SELECTOR, ":scope > .jupyter-widgets")
             and r.find_elements(By.CSS_SELECTOR, CONTROLS)]
    print(f"{rel}: {len(roots)} interactive widget(s) in the page, {expected} widget output(s) in the file")
    if len(roots) < expected:
        failures.append(f"{rel}: the file has {expected} widget outputs but the page shows {len(roots)} widgets")
    for i, root in enumerate(roots):
        before = wait_for(lambda: picture_digest(root), REDRAW_TIMEOUT, f"{rel}: widget {i} picture")
        action = move_first_control(driver, root)
        t0 = time.monotonic()
        try:
            wait_for(lambda: picture_digest(root) not in ("", before), REDRAW_TIMEOUT, f"{rel}: widget {i} redraw")
            print(f"  widget {i}: {action}; picture redrawn in {time.monotonic() - t0:.2f} s")
        except TimeoutError as err:
            failures.append(f"{rel}: widget {i}: {action}: {err}")
        tracebacks = root.find_elements(By.CSS_SELECTOR, '[data-mime-type="application/vnd.jupyter.stderr"]')
        if any("Traceback" in t.text or "Error" in t.text for t in tracebacks):
            failures.append(f"{rel}: widget {i}: error shown inside the widget after {action}")
    return failures


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__)
        return 2
    port, token = free_port(), hashlib.sha1(os.urandom(16)).hexdigest()
    failures = []
    originals = {Path(path): Path(path).read_bytes() for path in paths}
    with tempfile.TemporaryDirectory() as tmp:
        lab = start_lab(Path(tmp), port, token)
        driver = None
        try:
            wait_for(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or True, 60,
                     "JupyterLab to listen")
            driver = browser()
            for path in paths:
                try:
                    failures += check_notebook(driver, port, token, Path(path))
                except TimeoutError as err:
                    failures.append(str(err))
                except WebDriverException as err:  # e.g. a JupyterLab dialog in front of a control: say which
                    dialogs = [d.text for d in driver.find_elements(By.CSS_SELECTOR, ".jp-Dialog")]
                    failures.append(f"{path}: {err.msg}; dialogs open: {dialogs or 'none'}")
        finally:
            if driver is not None:
                driver.quit()
            lab.terminate()
            lab.wait(timeout=30)
    for path, content in originals.items():  # the page must never write the notebooks: put back and fail if it did
        if path.read_bytes() != content:
            path.write_bytes(content)
            failures.append(f"{path}: the file was changed on disk during the run (restored)")
    for failure in failures:
        print("FAIL", failure)
    print(f"browser test: {len(paths)} notebook(s), {len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
