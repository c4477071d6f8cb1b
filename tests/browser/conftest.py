"""A real browser for the course: JupyterLab as `make lab` starts it, and headless Chromium.

`make test-browser` runs these tests (not `make test`: pyproject's testpaths leave this folder
out). They need Debian's `chromium` and `chromium-driver` (README: one apt-get command) and
Selenium from requirements.txt; Selenium is pointed at Debian's chromedriver, so nothing is
downloaded. Everything started here is stopped here; screenshots go to build/browser/.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "build" / "browser"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1400,1000"]

if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("needs Chromium: sudo apt-get install -y chromium chromium-driver",
                allow_module_level=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, server: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"JupyterLab exited; see {log}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"JupyterLab did not answer within {timeout:.0f} s; see {log}")


def stop(server: subprocess.Popen) -> None:
    """Stop JupyterLab, its kernels and whatever they started (TFF helpers, Flower processes)."""
    try:
        family = psutil.Process(server.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    server.send_signal(signal.SIGTERM)    # Jupyter's own shutdown: kernels first
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    for proc in family:                   # anything that outlived its parent
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=10)


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    """JupyterLab from .venv as `make lab` starts it (same kernels, the course's settings), on a
    free port with a token, serving a scratch copy of lessons/ so that autosave never touches
    the committed notebooks. Yields the base URL (with the token)."""
    OUT.mkdir(parents=True, exist_ok=True)
    root = tmp_path_factory.mktemp("lab-root")
    shutil.copytree(ROOT / "lessons", root / "lessons")
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ)
    # A learner's kernel: without the headless marker, interact() builds real sliders.
    env.pop("FEDUTILS_RUN_ID", None)
    log = OUT / "jupyterlab.log"
    args = [str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser",
            f"--ServerApp.root_dir={root}", "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            "--MappingKernelManager.default_kernel_name=fl-course",
            # A new learner: no saved layout or personal settings (the course's own settings,
            # .venv/share/jupyter/lab/settings/overrides.json, still apply).
            f"--LabApp.workspaces_dir={root / 'workspaces'}",
            f"--LabApp.user_settings_dir={root / 'user-settings'}",
            "--LabApp.expose_app_in_browser=True"]     # lets the test read the notebook model
    if os.geteuid() == 0:
        args.append("--allow-root")
    with open(log, "w") as out:
        server = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT, env=env, cwd=root)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(f"{base}/api/status?token={token}", server, log)
        yield {"base": base, "token": token, "pid": server.pid}
    finally:
        stop(server)


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium (Debian's) with a fresh profile, driven through Debian's chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    service = Service(CHROMEDRIVER, log_output=str(tmp_path / "driver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(120)
    driver.set_script_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def screenshot():
    """screenshot(driver, name) saves build/browser/<name>.png."""
    def save(driver, name: str) -> Path:
        OUT.mkdir(parents=True, exist_ok=True)
        path = OUT / f"{name}.png"
        driver.save_screenshot(str(path))
        return path
    return save
