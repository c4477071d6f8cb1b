"""Starting, watching and stopping the operating-system processes of a local federation.

Nothing here knows Flower's protocol: `launcher` decides what to start. Every process gets its
own session (stopping the session stops the helpers it starts), the federation's tag in its
environment (so that anything it left behind can be found), and, on Linux, a request to be
killed if the process that started it dies, so no server outlives a crashed notebook.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import psutil

TAG_VARIABLE = "FEDUTILS_FEDERATION_ID"   # every process of one federation carries it


def find_command(name: str, env: dict, install_hint: str) -> str:
    """The full path of the program `name` on `env`'s PATH, or a RuntimeError with the fix."""
    found = shutil.which(name, path=env["PATH"])
    if found is None:
        raise RuntimeError(f"the command {name!r} was not found next to {sys.executable} or "
                           f"on PATH: {install_hint}")
    return found


def start(command: list, work: Path, log: str, env: dict) -> subprocess.Popen:
    """Start `command` (its program already a full path) in the folder `work`, so relative
    paths resolve there, with its output in `work / log`, in a new session."""
    with open(work / log, "wb") as out:
        return subprocess.Popen([str(c) for c in command], cwd=work, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, preexec_fn=_die_with_parent())


def _die_with_parent():
    """A preexec function asking Linux to SIGKILL the child when its parent dies (None
    elsewhere). The C library is loaded here, before the fork, so the child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(1, int(signal.SIGKILL))   # 1 = PR_SET_PDEATHSIG


def free_ports(count: int) -> list[int]:
    """Ports the kernel reports free on 127.0.0.1 (held open together so they differ)."""
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    """Wait until `proc` accepts connections on `port`; raise if it exits or takes too long."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{Path(proc.args[0]).name} exited at start-up; see {log}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{Path(proc.args[0]).name} did not open port {port} in "
                       f"{seconds:.0f} s; see {log}")


def read_json(path: Path) -> dict:
    """The JSON object in `path`, or {} while it does not exist yet."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def descendant_running(proc: subprocess.Popen, name: str) -> bool:
    """Is a process whose command line contains `name` running below `proc`?"""
    try:
        return any(name in " ".join(p.cmdline())
                   for p in psutil.Process(proc.pid).children(recursive=True))
    except psutil.Error:
        return False


def kill_session(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Send `sig` to `proc` and every process in its session's process group."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def tagged(tag: str) -> list[psutil.Process]:
    """Every live process whose environment carries the federation's `tag`."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(TAG_VARIABLE) == tag and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


def stop_all(procs: dict[str, subprocess.Popen], tag: str, last: str,
             grace: float = 10.0) -> list[str]:
    """SIGTERM every process group (the one named `last` after the others), wait, SIGKILL what
    is left; return the command lines of anything still alive afterwards (nothing, unless the
    operating system refused)."""
    for name in sorted(procs, key=lambda n: n == last):
        kill_session(procs[name], signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    _, alive = psutil.wait_procs(tagged(tag), timeout=max(0.1, deadline - time.monotonic()))
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    for proc in procs.values():
        kill_session(proc)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    psutil.wait_procs(alive, timeout=5)
    left = []
    for p in tagged(tag):
        try:
            left.append(" ".join(p.cmdline()))
        except psutil.Error:
            continue
    return left


class MemorySampler(threading.Thread):
    """Every 0.25 s, the summed resident memory and the number of the processes in `procs`
    and everything they started; keeps the peaks (bytes, count)."""

    def __init__(self, procs: dict[str, subprocess.Popen]):
        super().__init__(daemon=True)
        self.procs, self.peak_bytes, self.peak_count = procs, 0, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.25):
            found: dict[int, int] = {}
            for proc in list(self.procs.values()):
                try:
                    root = psutil.Process(proc.pid)
                    for p in [root] + root.children(recursive=True):
                        found[p.pid] = p.memory_info().rss
                except psutil.Error:
                    continue
            self.peak_bytes = max(self.peak_bytes, sum(found.values()))
            self.peak_count = max(self.peak_count, len(found))

    def stop(self, timeout: Optional[float] = 2.0) -> None:
        self.done.set()
        self.join(timeout=timeout)
