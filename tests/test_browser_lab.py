"""The tutorials in JupyterLab, driven by a real browser (headless Chromium through Playwright).

`make test-browser` runs this file (pytest marker ``browser``; the default `make test` deselects it).
It starts JupyterLab from this environment on a free local port, on a temporary copy of notebooks/
(nothing is written into the tracked notebooks), with ``KDLAB_SMOKE=1`` (the kernels inherit it:
smoke mode) and ``KDLAB_RUNS`` in a temporary folder. For each tutorial it opens the notebook, runs
all cells from JupyterLab's Run menu, saves it and checks

- every code cell ran and no output is an error (no traceback);
- figures rendered: every cell that makes a figure shows an image, and every image loaded;
- no figure is shown twice in one cell's output;
- every interactive explorer (``kd.widgets``) is a live widget: moving each of its controls redraws
  the figure;
- tqdm progress bars rendered as widgets (not as text, not as "Loading widget...").

It also fills in the nbgrader solution cell of ``exercises/03_exercises.ipynb`` with the
``my_kl_step`` of tutorial 03 (once as written there, once without its ``T ** 2`` factor) and checks
that the right answer passes and that the wrong one makes the check print its message alone.

And it runs `make lab` itself as a user does (issue 17), with WORK in a temporary folder: as root the
server starts (the Makefile's ``--allow-root``; without it, it exits at once), and tutorial 07, run
and saved from the File menu, is saved with its outputs into WORK while the tracked notebooks stay
unchanged and clean.

``KDLAB_BROWSER_NOTEBOOKS=<folder>`` checks another copy of notebooks/ (an older commit's, for one).
Screenshots go to ``runs/browser-test/<date-time>/`` (``runs/browser-test/latest``), or to
``KDLAB_BROWSER_OUT``; the server's log is there too. Chromium is Debian's ``/usr/bin/chromium``
(``apt-get install chromium``) or ``KDLAB_CHROMIUM``; Playwright's own browser download is not used.
Every process started here (the lab server, its kernels, Chromium) is stopped at the end, also when
a check fails.
"""
from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
# the notebooks to check: notebooks/, or another copy of them (an older commit's, say) in KDLAB_BROWSER_NOTEBOOKS
NOTEBOOKS = Path(os.environ.get("KDLAB_BROWSER_NOTEBOOKS") or ROOT / "notebooks").resolve()
TUTORIALS = sorted(p.name for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
EXERCISE = "exercises/03_exercises.ipynb"
CHROMIUM = os.environ.get("KDLAB_CHROMIUM", "/usr/bin/chromium")
# flags that let Debian's Chromium run as root in a container without network access (Playwright adds --headless
# and a fresh --user-data-dir of its own; without the background-networking flags connections get refused)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
NOTEBOOK_TIMEOUT_S = float(os.environ.get("KDLAB_BROWSER_NOTEBOOK_TIMEOUT", "900"))
WIDGET_TIMEOUT_S = 120.0
# calls that draw a figure in the tutorials (a cell with one of these shows at least one image)
FIGURE_CALL = re.compile(r"plt\.subplots\(|plt\.figure\(|kd\.viz\.show_grids\(|kd\.viz\.teacher_student_figure\(")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
WIDGET_FAILURE = re.compile(r"Loading widget|Error displaying widget|model not found|"
                            r"^(interactive|HBox|VBox|FloatProgress|IntProgress)\(", re.M)
TEXT_PROGRESS = re.compile(r"\d+%\|.*\|.*(it/s|s/it)")


# -- selection: only when asked for ------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def _asked_for(request):
    """Runs only when the marker expression names ``browser`` (`make test-browser`: ``-m browser``), so a
    plain ``pytest -m "not notebook"`` does not start a browser for minutes."""
    expr = request.config.getoption("markexpr") or ""
    if "browser" not in expr or re.search(r"not\s+browser", expr):
        pytest.skip("browser test: run `make test-browser` (pytest -m browser)")


# -- output folder -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def out_dir(request) -> Path:
    if os.environ.get("KDLAB_BROWSER_OUT"):
        out = Path(os.environ["KDLAB_BROWSER_OUT"]).expanduser().resolve()
    else:
        base = ROOT / "runs" / "browser-test"
        out = base / time.strftime("%Y%m%d-%H%M%S")
        out.mkdir(parents=True, exist_ok=True)
        latest = base / "latest"
        if latest.is_symlink() or not latest.exists():
            latest.unlink(missing_ok=True)
            latest.symlink_to(out.name)
    out.mkdir(parents=True, exist_ok=True)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\nbrowser test: screenshots and the lab server's log in {out}")
    return out


# -- the JupyterLab server ---------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _cmdline(p) -> list[str]:
    """``p``'s command line, or ``[]`` for a process that has exited (a zombie or gone: `make lab`'s shell may
    have started and reaped helpers between the listing and this look)."""
    import psutil

    try:
        return p.cmdline()
    except psutil.Error:
        return []


@dataclass
class Lab:
    url: str
    token: str
    root: Path  # the temporary copy of notebooks/ the server serves
    proc: subprocess.Popen = field(repr=False)
    log: Path
    seen: dict = field(default_factory=dict, repr=False)  # pid -> psutil.Process of every descendant seen

    def api(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                     headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read().decode()
        return json.loads(text) if text else None

    def remember_children(self) -> None:
        for p in _descendants(self.proc.pid):
            self.seen[p.pid] = p

    def shutdown_sessions(self) -> None:
        """Shut down every session and its kernel (each notebook's kernel once its checks are collected)."""
        self.remember_children()
        for s in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{s['id']}")

    def stop(self) -> None:
        import psutil

        if self.proc.poll() is not None and not self.seen:
            return
        self.remember_children()
        if self.proc.poll() is None:
            try:
                self.shutdown_sessions()
            except Exception:  # noqa: BLE001 - the server may already be broken; the signals below still stop it
                pass
            # the whole process group (started with start_new_session): the server, or `make lab` and the server it
            # runs; the server shuts down its kernels on SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        # kernels run in their own sessions: whatever the server left behind goes now
        alive = [p for p in self.seen.values() if p.is_running()]
        for p in alive:
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, still = psutil.wait_procs(alive, timeout=10)
        for p in still:
            try:
                p.kill()
            except psutil.Error:
                pass
        self.seen.clear()


def _lab_env(base: Path) -> dict:
    """The environment of a lab server under ``base``: smoke mode, run folders, JupyterLab's settings and
    workspaces, Jupyter's config, data and runtime folders and IPython's all in ``base``; JupyterLab
    settings: every cell in the page (no virtual scrolling, so every output can be inspected), no news."""
    settings = base / "settings"
    for plugin, values in {"@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
                           "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False}
                           }.items():
        f = settings / f"{plugin}.jupyterlab-settings"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(values))
    env = {k: v for k, v in os.environ.items()
           if k not in ("MPLBACKEND", "KDLAB_WIDGETS", "KDLAB_PROGRESS", "JUPYTER_TOKEN", "PYTEST_CURRENT_TEST")}
    env.update(KDLAB_SMOKE="1", KDLAB_RUNS=str(base / "runs"), JUPYTERLAB_SETTINGS_DIR=str(settings),
               JUPYTERLAB_WORKSPACES_DIR=str(base / "workspaces"), JUPYTER_CONFIG_DIR=str(base / "config"),
               JUPYTER_DATA_DIR=str(base / "data"), JUPYTER_RUNTIME_DIR=str(base / "runtime"),
               IPYTHONDIR=str(base / "ipython"))
    return env


@contextlib.contextmanager
def _stopped_at_the_end(server: Lab):
    """Yield ``server``; stop it (and everything it started) at the end, also on a failed check, Ctrl-C, a
    SIGTERM or an exit before the teardown."""
    atexit.register(server.stop)  # also when pytest is interrupted before the teardown below
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_DFL:  # a SIGTERM (`timeout`, CI cancelling) stops pytest as Ctrl-C does, with teardown

        def _terminate(signum, frame):
            raise KeyboardInterrupt(f"signal {signum}")

        signal.signal(signal.SIGTERM, _terminate)
    try:
        yield server
    finally:
        server.stop()
        atexit.unregister(server.stop)
        if previous == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, previous)


def _wait_until_up(server: Lab, timeout: float, what: str = "JupyterLab") -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.proc.poll() is not None:
            pytest.fail(f"{what} exited with {server.proc.returncode} at start:\n{server.log.read_text()[-3000:]}")
        try:
            server.api("GET", "/api/status")
            return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"{what} did not answer within {timeout:.0f} s:\n{server.log.read_text()[-3000:]}")
            time.sleep(0.5)


@pytest.fixture(scope="module")
def lab(tmp_path_factory, out_dir):
    pytest.importorskip("jupyterlab", reason="JupyterLab is not installed (pip install -e '.[lab,browser]')")
    pytest.importorskip("psutil")
    base = tmp_path_factory.mktemp("lab")
    root = base / "notebooks"
    shutil.copytree(NOTEBOOKS, root, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    env = _lab_env(base)
    port, token = _free_port(), secrets.token_hex(16)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.expose_app_in_browser=True"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = out_dir / "jupyterlab.log"
    with open(log, "w") as log_file:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    with _stopped_at_the_end(Lab(f"http://127.0.0.1:{port}", token, root, proc, log)) as server:
        _wait_until_up(server, 120)
        yield server


# -- the browser -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install -e '.[browser]')")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium, or set KDLAB_CHROMIUM to a Chrome/Chromium binary")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


# -- driving one notebook ----------------------------------------------------------------------------

KERNEL_IDLE = "() => window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel?.status === 'idle'"
RUN_FINISHED = """() => {
  const w = window.jupyterapp.shell.currentWidget;
  const k = w?.sessionContext?.session?.kernel;
  if (!k || k.status !== 'idle') return false;
  const prompts = [...w.node.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(e => e.textContent.trim());
  return !prompts.some(p => p.includes('*')) && /\\d/.test(prompts[0] || '');
}"""
# a short fingerprint of an image's source (its data: URL): equal images, equal fingerprints
HASH_JS = """const hash = s => {
    let h = 0;
    for (let i = 0; i < s.length; i++) h = (h * 31 + s.charCodeAt(i)) | 0;
    return s.length + ':' + h;
  };"""
# what each cell shows: prompt, outputs (mime type and text), images (fingerprint; loaded or not), widgets
CELL_FACTS = """() => {
  HASH
  return [...document.querySelectorAll('.jp-Notebook .jp-Cell')].map(cell => ({
    code: cell.classList.contains('jp-CodeCell'),
    prompt: cell.querySelector('.jp-InputPrompt')?.textContent.trim() || '',
    outputs: [...cell.querySelectorAll('.jp-Cell-outputArea .jp-OutputArea-output')]
      .map(o => ({mime: o.getAttribute('data-mime-type') || '', text: o.innerText.slice(0, 4000),
                  in_widget: !!o.closest('.jupyter-widgets')})),
    images: [...cell.querySelectorAll('.jp-Cell-outputArea img')]
      .map(i => ({src: hash(i.src), loaded: i.complete && i.naturalWidth > 0})),
    widgets: cell.querySelectorAll('.jp-Cell-outputArea .jupyter-widgets').length,
    progress: cell.querySelectorAll('.jp-Cell-outputArea .widget-hprogress, .jp-Cell-outputArea .widget-progress').length,
    widget_text: [...cell.querySelectorAll('.jp-Cell-outputArea .jp-OutputArea-output')]
      .map(o => o.innerText).join('\\n').slice(0, 20000),
  }));
}""".replace("HASH", HASH_JS)
IMAGE_HASHES = """cell => {
  HASH
  return [...cell.querySelectorAll('.jp-Cell-outputArea img')]
    .filter(i => i.complete && i.naturalWidth > 0).map(i => hash(i.src));
}""".replace("HASH", HASH_JS)


@dataclass
class Run:
    """What one notebook showed in the lab, collected while its kernel was alive."""
    name: str
    source: list  # each cell's source, in order
    cells: list  # CELL_FACTS per cell
    saved: dict  # the notebook as JupyterLab saved it after the run
    seconds: float
    screenshots: list = field(default_factory=list)
    explorers: list = field(default_factory=list)  # (cell, control, changed, detail)


def _stem(path: str) -> str:
    return path.replace("/", "_").removesuffix(".ipynb")


def _dismiss_dialogs(page) -> None:
    """Accept any dialog JupyterLab opens (kernel choice, for one), with its default button."""
    dialog = page.locator(".jp-Dialog")
    if dialog.count():
        page.locator(".jp-Dialog .jp-mod-accept").first.click()


def run_notebook(lab: Lab, browser, path: str, out_dir: Path, explore: bool = True, file_menu_save: bool = False) -> Run:
    """Open ``path`` (relative to the lab's root) in a fresh page, run all cells from the Run menu,
    save (from the File menu as a user does with ``file_menu_save``, else with JupyterLab's save command),
    collect what every cell shows, move every explorer's controls, then shut its kernel down."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    stem = _stem(path)
    console_errors = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    try:
        t0 = time.monotonic()
        # a workspace of its own (reset), so the lab does not reopen the notebooks opened before this one
        page.goto(f"{lab.url}/lab/workspaces/{stem}/tree/{path}?reset&token={lab.token}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
        deadline = time.monotonic() + 120
        while not page.evaluate(KERNEL_IDLE):
            _dismiss_dialogs(page)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path}: the kernel did not start within 120 s")
            time.sleep(0.5)
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
        try:
            page.wait_for_function(RUN_FINISHED, timeout=NOTEBOOK_TIMEOUT_S * 1000, polling=1000)
            time.sleep(1.0)  # the last outputs and widget views settle
            page.wait_for_function(RUN_FINISHED, timeout=60_000, polling=500)
        except Exception:
            page.screenshot(path=str(out_dir / f"{stem}-timeout.png"))
            raise
        seconds = time.monotonic() - t0
        if file_menu_save:
            page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^File$")).click()
            page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Save Notebook$")).click()
        else:
            page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
        saved_file = lab.root / path
        deadline = time.monotonic() + 60
        while True:  # the save has landed once the file has execution counts
            saved = json.loads(saved_file.read_text())
            if any(c.get("execution_count") for c in saved["cells"] if c["cell_type"] == "code"):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path}: JupyterLab did not save the notebook")
            time.sleep(0.5)
        run = Run(path, ["".join(c["source"]) for c in saved["cells"]], page.evaluate(CELL_FACTS), saved, seconds)
        page.screenshot(path=str(out_dir / f"{stem}.png"))
        run.screenshots.append(out_dir / f"{stem}.png")
        cells = page.locator(".jp-Notebook .jp-Cell")
        for i, facts in enumerate(run.cells):
            if facts["images"] or facts["widgets"] or any("stderr" in o["mime"] for o in facts["outputs"]):
                shot = out_dir / f"{stem}-cell{i:02d}.png"
                cells.nth(i).locator(".jp-Cell-outputArea").screenshot(path=str(shot))
                run.screenshots.append(shot)
        if explore:
            for i, src in enumerate(run.source):
                if "kd.widgets." in src and run.saved["cells"][i]["cell_type"] == "code":
                    run.explorers += _move_controls(page, cells.nth(i), f"{stem}-cell{i:02d}", i, out_dir)
        if console_errors:
            (out_dir / f"{stem}-console.txt").write_text("\n".join(console_errors))
        return run
    finally:
        try:
            lab.shutdown_sessions()
        except Exception:  # noqa: BLE001 - the lab fixture's teardown stops the server and every kernel anyway
            pass
        context.close()


def _wait_for_new_image(cell, before: list, timeout: float) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = cell.evaluate(IMAGE_HASHES)
        if now and now != before:
            time.sleep(1.0)  # a slider drag can queue several redraws: wait until the last one is shown
            settled = cell.evaluate(IMAGE_HASHES)
            if settled == now:
                return now
            continue
        time.sleep(0.25)
    return cell.evaluate(IMAGE_HASHES)


def _move_controls(page, cell, stem: str, index: int, out_dir: Path) -> list:
    """Move each control of the explorer in ``cell`` (sliders by dragging the handle, dropdowns by
    choosing another entry) and record whether the figure was redrawn with a different image."""
    results = []
    area = cell.locator(".jp-Cell-outputArea")
    try:
        area.locator(".jupyter-widgets").first.wait_for(timeout=30_000)
    except Exception:  # noqa: BLE001 - recorded as a failed check below
        return [(index, "widget", False, "no widget is shown in the cell's output")]
    before = _wait_for_new_image(cell, [], 60)
    area.screenshot(path=str(out_dir / f"{stem}-explorer-before.png"))
    if not before:
        return [(index, "widget", False, "the explorer shows no figure before its controls are moved")]
    sliders = area.locator(".widget-slider")
    dropdowns = area.locator(".widget-dropdown select")
    for k in range(sliders.count()):
        slider = sliders.nth(k)
        label = slider.locator(".widget-label").inner_text().strip() or f"slider {k}"
        readout_before = slider.locator(".widget-readout").inner_text().strip()
        handle = slider.locator(".noUi-handle").first
        handle.scroll_into_view_if_needed()
        box = handle.bounding_box()
        track = slider.locator(".noUi-target").first.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] / 2 + track["width"] * 0.3, box["y"] + box["height"] / 2, steps=8)
        page.mouse.up()
        after = _wait_for_new_image(cell, before, WIDGET_TIMEOUT_S)
        readout_after = slider.locator(".widget-readout").inner_text().strip()
        safe = re.sub(r"\W+", "_", label).strip("_")
        area.screenshot(path=str(out_dir / f"{stem}-explorer-{safe}.png"))
        results.append((index, label, bool(after) and after != before,
                        f"{label}: {readout_before} -> {readout_after}; image {'changed' if after != before else 'unchanged'}"))
        before = after or before
    for k in range(dropdowns.count()):
        select = dropdowns.nth(k)
        label = select.locator("xpath=..").locator(".widget-label").inner_text().strip() or f"dropdown {k}"
        options = select.locator("option").all_inner_texts()
        current = select.evaluate("s => s.options[s.selectedIndex].text")
        other = next((o for o in options if o != current), None)
        if other is None:
            continue
        select.select_option(label=other)
        after = _wait_for_new_image(cell, before, WIDGET_TIMEOUT_S)
        safe = re.sub(r"\W+", "_", label).strip("_")
        area.screenshot(path=str(out_dir / f"{stem}-explorer-{safe}.png"))
        results.append((index, label, bool(after) and after != before,
                        f"{label}: {current!r} -> {other!r}; image {'changed' if after != before else 'unchanged'}"))
        before = after or before
    if not results:
        results.append((index, "widget", False, "the explorer has no slider or dropdown"))
    return results


# -- the tutorials -----------------------------------------------------------------------------------

_RUNS: dict[str, Run | BaseException] = {}


def executed(name: str, lab, browser, out_dir) -> Run:
    """Tutorial ``name`` run in the lab, once per session (the checks below share the run)."""
    if name not in _RUNS:
        try:
            _RUNS[name] = run_notebook(lab, browser, name, out_dir)
        except Exception as e:  # noqa: BLE001 - every check of this notebook reports it
            _RUNS[name] = e
    got = _RUNS[name]
    if isinstance(got, BaseException):
        pytest.fail(f"{name}: the lab run did not complete: {type(got).__name__}: {got}", pytrace=False)
    return got


def _errors(saved: dict) -> list[tuple[int, str]]:
    out = []
    for i, cell in enumerate(saved["cells"]):
        for o in cell.get("outputs", []):
            if o["output_type"] == "error":
                out.append((i, ANSI.sub("", "\n".join(o.get("traceback", [])) or f"{o['ename']}: {o['evalue']}")))
    return out


def _not_run(run: Run) -> list[int]:
    return [i for i, c in enumerate(run.cells) if c["code"] and run.source[i].strip() and not re.search(r"\d", c["prompt"])]


@pytest.mark.parametrize("name", TUTORIALS)
def test_runs_without_errors(name, lab, browser, out_dir):
    run = executed(name, lab, browser, out_dir)
    errors = _errors(run.saved)
    shown = [(i, o["text"]) for i, c in enumerate(run.cells) for o in c["outputs"]
             if "stderr" in o["mime"] and ("Traceback" in o["text"] or re.search(r"^\w*(Error|Exception)\b", o["text"], re.M))]
    assert not errors and not shown, f"{name}: error outputs (cell index, text):\n" + "\n\n".join(
        f"[{i}] {t[-2500:]}" for i, t in errors + shown)
    assert not _not_run(run), f"{name}: cells not run by Run All: {_not_run(run)}"
    print(f"{name}: ran all cells in the lab in {run.seconds:.0f} s")


@pytest.mark.parametrize("name", TUTORIALS)
def test_figures_render(name, lab, browser, out_dir):
    run = executed(name, lab, browser, out_dir)
    missing = [i for i, (src, c) in enumerate(zip(run.source, run.cells))
               if c["code"] and FIGURE_CALL.search(src) and not c["images"]]
    broken = [i for i, c in enumerate(run.cells) if any(not im["loaded"] for im in c["images"])]
    assert not missing, f"{name}: cells that make a figure but show no image: {missing}"
    assert not broken, f"{name}: cells with an image that did not load: {broken}"
    if FIGURE_CALL.search("\n".join(run.source)):
        assert any(c["images"] for c in run.cells), f"{name}: no figure rendered at all"


@pytest.mark.parametrize("name", TUTORIALS)
def test_progress_bars_are_widgets(name, lab, browser, out_dir):
    run = executed(name, lab, browser, out_dir)
    failed = [(i, m.group(0)) for i, c in enumerate(run.cells) if (m := WIDGET_FAILURE.search(c["widget_text"]))]
    text_bars = [i for i, c in enumerate(run.cells) for o in c["outputs"] if TEXT_PROGRESS.search(o["text"])]
    assert not failed, f"{name}: widgets not rendered (cell, what it shows instead): {failed}"
    assert not text_bars, f"{name}: tqdm progress bars printed as text, not widgets, in cells {text_bars}"
    views = sum(o.get("output_type") == "display_data" and "application/vnd.jupyter.widget-view+json" in o.get("data", {})
                for c in run.saved["cells"] for o in c.get("outputs", []))
    bars = sum(c["progress"] for c in run.cells)
    if views:
        assert sum(c["widgets"] for c in run.cells) > 0, f"{name}: {views} widget outputs saved but none rendered"
    print(f"{name}: {bars} progress bars rendered as widgets, {views} widget outputs")


@pytest.mark.parametrize("name", [n for n in TUTORIALS if "kd.widgets." in (NOTEBOOKS / n).read_text()])
def test_explorers_are_live(name, lab, browser, out_dir):
    run = executed(name, lab, browser, out_dir)
    assert run.explorers, f"{name}: no explorer cell was found"
    dead = [detail for _, _, changed, detail in run.explorers if not changed]
    assert not dead, f"{name}: controls that did not redraw the figure: {dead} (screenshots in {out_dir})"
    for cell, _, _, detail in run.explorers:
        print(f"{name} cell {cell}: {detail}")


def test_some_tutorial_shows_progress_bars(lab, browser, out_dir):
    """Training cells show tqdm bars as widgets in the lab (kd.utils.progress_bar uses tqdm.auto)."""
    runs = [executed(n, lab, browser, out_dir) for n in TUTORIALS]
    assert sum(c["progress"] for r in runs for c in r.cells) > 0, "no tutorial showed a progress bar widget"


@pytest.mark.parametrize("name", TUTORIALS)
def test_no_figure_shown_twice(name, lab, browser, out_dir):
    """A cell shows each figure once: a cell ending in a call that returns the figure (without ``;``)
    shows it twice in JupyterLab, once from the inline backend and once as the cell's value."""
    run = executed(name, lab, browser, out_dir)
    twice = {}
    for i, c in enumerate(run.cells):
        srcs = [im["src"] for im in c["images"]]
        if len(srcs) != len(set(srcs)):
            twice[i] = run.source[i].strip().splitlines()[-1]
    assert not twice, (f"{name}: cells that show the same figure twice (cell index: last line): {twice}; screenshots: "
                       + ", ".join(str(out_dir / f"{_stem(name)}-cell{i:02d}.png") for i in twice))


# -- the exercise: nbgrader student version of 03 ----------------------------------------------------

def _tutorial_function(tutorial: str, name: str) -> str:
    from assignment_sources import tutorial_functions

    return tutorial_functions(tutorial.removesuffix(".ipynb"))[name] + "\n"


def _solution_cells(nb: dict) -> list[int]:
    return [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
            and c.get("metadata", {}).get("nbgrader", {}).get("solution") is True
            and "raise NotImplementedError" in "".join(c["source"])]


def _fill_in(lab: Lab, variant: str, body: str) -> str:
    """Write the exercise with its my_kl_step solution cell replaced by ``body`` next to it in the
    lab's copy; returns its path relative to the lab's root."""
    nb = json.loads((lab.root / EXERCISE).read_text())
    cells = [i for i in _solution_cells(nb) if "my_kl_step" in "".join(nb["cells"][i]["source"])]
    if not cells:
        pytest.skip(f"{EXERCISE} has no nbgrader solution cell for my_kl_step yet (contract: a code cell with metadata "
                    "nbgrader.solution == true containing `raise NotImplementedError` and naming my_kl_step)")
    nb["cells"][cells[0]]["source"] = body
    path = EXERCISE.replace(".ipynb", f"_{variant}.ipynb")
    (lab.root / path).write_text(json.dumps(nb, indent=1))
    return path


def test_exercise_03_right_answer_passes(lab, browser, out_dir):
    body = _tutorial_function("03_kl_derivation.ipynb", "my_kl_step")
    path = _fill_in(lab, "solved", body)
    run = run_notebook(lab, browser, path, out_dir, explore=False)
    errors = _errors(run.saved)
    assert not errors, f"{path} with tutorial 03's my_kl_step: error outputs:\n" + "\n\n".join(f"[{i}] {t}" for i, t in errors)
    assert not _not_run(run), f"{path}: cells not run by Run All: {_not_run(run)}"


def test_exercise_03_missing_T2_shows_the_message_alone(lab, browser, out_dir):
    body = _tutorial_function("03_kl_derivation.ipynb", "my_kl_step")
    wrong = body.replace("(kl * T ** 2).mean()", "kl.mean()")
    assert wrong != body, "tutorial 03's my_kl_step no longer has `(kl * T ** 2).mean()`: update this test"
    path = _fill_in(lab, "without_T2", wrong)
    run = run_notebook(lab, browser, path, out_dir, explore=False)
    errors = _errors(run.saved)
    assert errors, f"{path}: the checks passed a my_kl_step without the T^2 factor"
    (i, text), *_ = errors
    dom = "\n".join(o["text"] for o in run.cells[i]["outputs"] if "stderr" in o["mime"])
    for shown in (text, dom):
        assert re.search(r"T\s*\^\s*2|T\s*\*\*\s*2|T²", shown), f"{path} cell {i}: the message does not name T^2:\n{shown}"
        assert not re.search(r"Traceback|kdlab[/\\]exercises|^\s*File \"|^-+>|Cell In\[", shown, re.M), (
            f"{path} cell {i}: the output shows traceback frames, not the check's message alone:\n{shown}")


# -- `make lab` as a user runs it (issue 17) ---------------------------------------------------------

LAB_TUTORIAL = "07_fused_kernels.ipynb"  # the quickest tutorial
LAB_STAMP = ".venv/.kdlab-lab-installed"  # what `make lab` needs first (the Makefile's $(LAB)): JupyterLab installed


def _shell_env(env: dict) -> dict:
    """``env`` as in a shell, not in a sub-make of `make test-browser` (no MAKEFLAGS, no jobserver)."""
    return {k: v for k, v in env.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}


def _tracked_notebooks() -> dict[str, str]:
    """Every file git tracks under notebooks/, with a hash of its content."""
    files = subprocess.run(["git", "ls-files", "-z", "--", "notebooks/"], cwd=ROOT, capture_output=True, check=True)
    return {f: hashlib.sha256((ROOT / f).read_bytes()).hexdigest()
            for f in files.stdout.decode().split("\0") if f and (ROOT / f).is_file()}


def _make_lab(work: Path, base: Path, port: int, token: str, log: Path, *args: str) -> subprocess.Popen:
    """Start ``make lab WORK=<work>`` from the repository root in a process group of its own, on ``port`` and
    ``token`` (jupyter_server reads JUPYTER_PORT and JUPYTER_TOKEN), with Jupyter's folders in ``base``."""
    env = _shell_env(_lab_env(base))
    env.update(JUPYTER_PORT=str(port), JUPYTER_PORT_RETRIES="0", JUPYTER_TOKEN=token)
    config = Path(env["JUPYTER_CONFIG_DIR"])
    config.mkdir(parents=True, exist_ok=True)
    # what a headless test needs and a user does not: no browser of the server's own; window.jupyterapp for the checks
    (config / "jupyter_server_config.json").write_text(json.dumps({"ServerApp": {"open_browser": False}}))
    (config / "jupyter_lab_config.json").write_text(json.dumps({"LabApp": {"expose_app_in_browser": True}}))
    with open(log, "w") as f:
        return subprocess.Popen(["make", "lab", f"WORK={work}", *args], cwd=ROOT, env=env, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)


def test_make_lab_runs_and_saves_into_work(browser, out_dir, tmp_path):
    """`make lab` itself, as a user runs it (issue 17): as root it does not exit at start (``--allow-root``,
    which the Makefile adds when ``id -u`` is 0, is what lets it start: without it, it exits at once), and a
    tutorial run and saved in the lab is saved into the working copy (WORK), never into the tracked
    notebooks/, which stay clean. Uses notebooks/ of this checkout, whatever KDLAB_BROWSER_NOTEBOOKS says."""
    pytest.importorskip("jupyterlab", reason="JupyterLab is not installed (pip install -e '.[lab,browser]')")
    pytest.importorskip("psutil")
    if not shutil.which("make") or not shutil.which("git"):
        pytest.skip("needs make and git")
    if subprocess.run(["make", "-q", LAB_STAMP], cwd=ROOT, env=_shell_env(dict(os.environ))).returncode != 0:
        pytest.fail(f"`make lab` would first install into .venv ({LAB_STAMP} is out of date): run `make test-browser`")
    before = _tracked_notebooks()
    clean_before = subprocess.run(["git", "diff", "--quiet", "--", "notebooks/"], cwd=ROOT).returncode == 0
    as_root = os.geteuid() == 0
    shots = out_dir / "make-lab"
    shots.mkdir(exist_ok=True)
    work = tmp_path / "work"  # an absolute WORK

    if as_root:  # the same command without --allow-root (ALLOW_ROOT emptied) exits at once, as before issue 17
        log = shots / "make-lab-without-allow-root.log"
        proc = _make_lab(tmp_path / "work-without", tmp_path / "jupyter-without", _free_port(), secrets.token_hex(16),
                         log, "ALLOW_ROOT=")
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        assert rc not in (None, 0) and "Running as root is not recommended" in log.read_text(), (
            f"as root, `make lab ALLOW_ROOT=` should exit at once with JupyterLab's root message; it "
            f"{'kept running' if rc is None else f'exited with {rc}'}:\n{log.read_text()[-2000:]}")

    port, token = _free_port(), secrets.token_hex(16)
    log = shots / "make-lab.log"
    proc = _make_lab(work, tmp_path / "jupyter", port, token, log)
    with _stopped_at_the_end(Lab(f"http://127.0.0.1:{port}", token, work, proc, log)) as server:
        _wait_until_up(server, 60, "`make lab`")  # fails with make's output if the server exits (as root: no --allow-root)
        server.remember_children()
        servers = [line for line in map(_cmdline, server.seen.values()) if f"{work}/" in line]
        assert len(servers) == 1, f"expected one JupyterLab serving {work}/ under make, found: {servers}"
        assert ("--allow-root" in servers[0]) == as_root, (
            f"uid {os.geteuid()}: `make lab` ran {' '.join(servers[0])}")
        assert (work / LAB_TUTORIAL).is_file(), f"`make lab WORK={work}` did not copy {LAB_TUTORIAL} there:\n{log.read_text()}"
        run = run_notebook(server, browser, LAB_TUTORIAL, shots, explore=False, file_menu_save=True)
        assert proc.poll() is None, f"`make lab` exited during the run with {proc.returncode}:\n{log.read_text()[-3000:]}"
    # the server has stopped: whatever it was going to write (autosave included) is written
    errors = _errors(run.saved)
    assert not errors, f"{LAB_TUTORIAL} in `make lab`: error outputs:\n" + "\n\n".join(f"[{i}] {t}" for i, t in errors)
    saved = json.loads((work / LAB_TUTORIAL).read_text())
    code = [c for c in saved["cells"] if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in code if "".join(c["source"]).strip()) and any(c.get("outputs") for c in code), (
        f"{work / LAB_TUTORIAL}: the copy in WORK was not saved with its outputs")
    after = _tracked_notebooks()
    changed = sorted(f for f in before.keys() | after.keys() if before.get(f) != after.get(f))
    assert not changed, f"`make lab` wrote into tracked files under notebooks/: {changed}"
    if clean_before:  # (a checkout with edits of its own in notebooks/ is checked by the hashes above only)
        diff = subprocess.run(["git", "diff", "--stat", "--", "notebooks/"], cwd=ROOT, capture_output=True, text=True)
        assert subprocess.run(["git", "diff", "--quiet", "--", "notebooks/"], cwd=ROOT).returncode == 0, (
            f"`git diff --quiet -- notebooks/` fails after `make lab`:\n{diff.stdout}")
    check = subprocess.run([sys.executable, "tools/nbclean.py", "--check", f"notebooks/{LAB_TUTORIAL}"], cwd=ROOT,
                           capture_output=True, text=True)
    assert check.returncode == 0, f"notebooks/{LAB_TUTORIAL} is not clean after `make lab`:\n{check.stdout}{check.stderr}"
    print(f"make lab (uid {os.geteuid()}): {LAB_TUTORIAL} ran in {run.seconds:.0f} s and was saved into {work}; "
          "notebooks/ unchanged")
