"""Stop TensorFlow Federated's `worker_binary` helpers so none outlives the run that started it.

TFF 0.87 starts one `worker_binary` process per Python process that runs a TFF computation and
never stops it: it outlives its parent (and, in a script, keeps the script's stdout open, so a
pipe reading that output never ends). `fedutils.tff_bridge` calls `stop_on_exit()` when it first
imports TFF; the test harness and `make test` call `stop_workers()` as a backstop.

Command line:  python -m fedutils.workers [--since EPOCH] [--report]
"""
from __future__ import annotations

import argparse
import atexit
import os
import signal
import sys
from typing import Optional

import psutil

WORKER_NAME = "worker_binary"
_installed = False


def find_workers(since: Optional[float] = None, children_of: Optional[int] = None
                 ) -> list[psutil.Process]:
    """TFF helper processes on this machine, optionally only those started after `since`
    (seconds since the epoch) or only the descendants of process `children_of`."""
    if children_of is not None:
        try:
            candidates = psutil.Process(children_of).children(recursive=True)
        except psutil.NoSuchProcess:
            candidates = []
    else:
        candidates = list(psutil.process_iter())
    found = []
    for proc in candidates:
        try:
            if proc.name() != WORKER_NAME or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if since is not None and proc.create_time() < since:
                continue
            found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def stop_workers(since: Optional[float] = None, children_of: Optional[int] = None,
                 timeout: float = 5.0) -> int:
    """Stop matching helpers (SIGINT as TFF itself does, then SIGKILL); return how many."""
    workers = find_workers(since=since, children_of=children_of)
    for proc in workers:
        try:
            proc.send_signal(signal.SIGINT)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(workers, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout)
    return len(workers)


def stop_on_exit() -> None:
    """Stop this process's helpers when it exits normally or on SIGTERM (idempotent).

    A Jupyter kernel that is shut down or restarted exits normally, so this covers notebooks.
    """
    global _installed
    if _installed:
        return
    _installed = True
    pid = os.getpid()
    atexit.register(stop_workers, children_of=pid)
    previous = signal.getsignal(signal.SIGTERM)

    def _on_sigterm(signum, frame):
        stop_workers(children_of=pid)
        if callable(previous):
            previous(signum, frame)
        else:
            sys.exit(128 + signum)

    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: atexit alone must do
        pass


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--since", type=float, default=None,
                        help="only helpers started after this time (seconds since the epoch)")
    parser.add_argument("--report", action="store_true",
                        help="exit with status 1 if any helper had been left running")
    args = parser.parse_args(argv)
    stopped = stop_workers(since=args.since)
    if stopped:
        print(f"fedutils.workers: stopped {stopped} leftover TFF {WORKER_NAME} process(es)",
              file=sys.stderr)
    else:
        print(f"fedutils.workers: no TFF {WORKER_NAME} process left running")
    return 1 if (args.report and stopped) else 0


if __name__ == "__main__":
    sys.exit(main())
