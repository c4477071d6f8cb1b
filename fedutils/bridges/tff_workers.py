"""Stop TensorFlow Federated's `worker_binary` helpers so none outlives the run that started it.

TFF 0.87 starts one `worker_binary` process per Python process that runs a TFF computation and
never stops it: it outlives its parent (and, in a script, keeps the script's stdout open, so a
pipe reading that output never ends). `fedutils.tff_bridge` calls `stop_on_exit()` when it first
imports TFF; the test harness and `make test` call `stop_workers()` as a backstop.

A run (a test session, `make notebooks`) can tag everything it starts by setting the
environment variable FEDUTILS_RUN_ID: kernels and their helpers inherit it, so the run can stop
exactly its own helpers, even after their parents are gone, and nobody else's.

Command line:  python -m fedutils.bridges.tff_workers [--since EPOCH] [--run-id ID] [--report]
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
RUN_ID_VARIABLE = "FEDUTILS_RUN_ID"
_installed = False


def find_workers(since: Optional[float] = None, children_of: Optional[int] = None,
                 run_id: Optional[str] = None) -> list[psutil.Process]:
    """TFF helper processes on this machine, optionally only those started after `since`
    (seconds since the epoch), only the descendants of process `children_of`, or only those
    whose environment carries FEDUTILS_RUN_ID=`run_id`."""
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
            if run_id is not None and proc.environ().get(RUN_ID_VARIABLE) != run_id:
                continue
            found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def stop_workers(since: Optional[float] = None, children_of: Optional[int] = None,
                 run_id: Optional[str] = None, timeout: float = 5.0) -> int:
    """Stop matching helpers (SIGINT as TFF itself does, then SIGKILL); return how many."""
    workers = find_workers(since=since, children_of=children_of, run_id=run_id)
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
    parser.add_argument("--run-id", default=None,
                        help=f"only helpers started by the run that set {RUN_ID_VARIABLE}")
    parser.add_argument("--report", action="store_true",
                        help="exit with status 1 if any helper had been left running")
    args = parser.parse_args(argv)
    stopped = stop_workers(since=args.since, run_id=args.run_id)
    if stopped:
        print(f"fedutils.bridges.tff_workers: stopped {stopped} leftover TFF {WORKER_NAME} process(es)",
              file=sys.stderr)
    else:
        print(f"fedutils.bridges.tff_workers: no TFF {WORKER_NAME} process left running")
    return 1 if (args.report and stopped) else 0


if __name__ == "__main__":
    sys.exit(main())
