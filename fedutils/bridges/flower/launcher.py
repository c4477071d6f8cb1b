"""Run the course's Flower app (`fedutils/bridges/flower/app/`) as a real federation here.

One SuperLink (Flower's server) and N SuperNodes (its clients) each run as a separate process
and talk gRPC over loopback, exactly as they would across machines; `flwr run` submits the app,
and the SuperLink starts the ServerApp (FedAvg, then federated evaluation on the nodes). Each
SuperNode runs in Flower's `process` isolation with one long-lived ClientApp process beside it
(`clientapp_worker`), instead of a new Python process per message. The ClientApp trains with
NumPy only (`app/digits_app/task.py`, checked against `fedutils.fedavg.client_update`), so a
node needs no TensorFlow. Nothing here simulates: these are Flower's own deployment processes.

`run_federation` writes a working folder (the app, one data file per node, the initial
model), starts the processes there, follows the rounds, and stops every process it started,
whatever happens; `task.simulate` runs `fedutils.run_fedavg` on the same split and initial
weights so the two can be compared. Flower needs protobuf 5 or newer, which TensorFlow 2.14
(and so TFF) cannot use: this works in the current-TensorFlow environment (or on Colab).

Command line (`make federation`):
    python -m fedutils.bridges.flower.launcher [--clients 3] [--rounds 3]
        [--kill-client 2 --kill-round 2] [--round-timeout 12] [--compare]
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from fedutils.bridges.flower.processes import (TAG_VARIABLE, MemorySampler,
                                               descendant_running, find_command,
                                               free_ports, kill_session, read_json, start,
                                               stop_all, wait_for_port)
from fedutils.bridges.flower.task import digits_model, node_data, simulate
from fedutils.core.checks import check_float, check_int

APP_DIR = Path(__file__).resolve().parent / "app"   # a Flower project: pyproject.toml + code
FLOWER_VERSION = "1.39.0"
INSTALL_HINT = f"pip install flwr=={FLOWER_VERSION}"
# Offline and quiet: no usage telemetry, no check for a newer Flower on PyPI. The SuperLink's
# SuperExec looks for a ServerApp to start every second by default; every half second starts
# the run sooner without a noticeable load. (TensorFlow's log settings come from os.environ,
# where importing fedutils put them.)
FLOWER_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
              "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.5", "PYTHONUNBUFFERED": "1"}


@dataclass
class FederationResult:
    """What one Flower run produced: the ServerApp's record of every round, the final model,
    what was run, and what the processes cost."""
    rounds: list[dict]                    # per round: "train" and "evaluate" counts, metrics
    final_weights: list[np.ndarray]
    workdir: Path                         # node data, the app, logs of every process
    commands: dict[str, str] = field(default_factory=dict)  # what was run, one line each
    killed: list[int] = field(default_factory=list)   # nodes killed mid-run
    left_running: list[str] = field(default_factory=list)  # should always stay empty
    peak_processes: int = 0               # most federation processes alive at once
    peak_memory_mb: float = 0.0           # their largest summed resident memory
    seconds: float = 0.0                  # wall time (not printed: it depends on the machine)

    @property
    def accuracies(self) -> list[float]:
        """Federated accuracy after each round: the nodes' held-out accuracies, weighted by
        their held-out examples (only the nodes that replied)."""
        return [r["accuracy"] for r in self.rounds]


def run_federation(num_clients: int = 3, rounds: int = 3, local_epochs: int = 1,
                   client_lr: float = 0.1, batch_size: int = 20, seed: int = 0,
                   round_timeout: float = 12.0, kill_client: Optional[int] = None,
                   kill_round: int = 2, timeout: float = 600.0, verbose: bool = True,
                   workdir: Optional[str] = None) -> FederationResult:
    """Start a SuperLink and `num_clients` SuperNodes on 127.0.0.1, run the Flower app for
    `rounds` rounds, stop every process, and return what the ServerApp recorded.

    `round_timeout` is how long the server waits for the replies of one step (train or
    evaluate): a node that never answers costs that much once, then is not asked again. With
    `kill_client` (a node's partition id), that SuperNode is killed (SIGKILL, no goodbye) as
    the server sends out round `kill_round`'s training, to show the server carries on.
    `timeout` bounds the whole run.
    """
    num_clients = check_int("num_clients", num_clients, minimum=1, maximum=20)
    rounds = check_int("rounds", rounds, minimum=1, maximum=100)
    local_epochs = check_int("local_epochs", local_epochs, minimum=1)
    client_lr = check_float("client_lr", client_lr, low=0.0, low_inclusive=False)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    round_timeout = check_float("round_timeout", round_timeout, low=1.0)
    timeout = check_float("timeout", timeout, low=10.0)
    if kill_client is not None:
        kill_client = check_int("kill_client", kill_client, minimum=0, maximum=num_clients - 1)
        kill_round = check_int("kill_round", kill_round, minimum=1, maximum=rounds)
    require_flower()

    work = Path(workdir or tempfile.mkdtemp(prefix="fl-federation-"))
    work.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex
    env = _environment(work, tag)
    run_config = (f"num-server-rounds={rounds} local-epochs={local_epochs} "
                  f"client-lr={client_lr} batch-size={batch_size} "
                  f"round-timeout={round_timeout:g} min-nodes={num_clients}")
    say = print if verbose else (lambda *a, **k: None)

    started = time.perf_counter()
    procs: dict[str, subprocess.Popen] = {}
    killed: list[int] = []
    memory = MemorySampler(procs)
    memory.start()
    try:
        _launch(procs, num_clients, run_config, work, env, say,
                prepare=lambda: _prepare(work, num_clients, seed, batch_size))
        _follow(procs, work, rounds, round_timeout, kill_client, kill_round, killed, timeout,
                say)
    finally:
        memory.stop()
        left = stop_all(procs, tag, last="superlink")
    state = read_json(work / "results.json")
    weights = np.load(work / state["weights_path"])
    result = FederationResult(rounds=state["rounds"],
                              final_weights=[weights[k] for k in sorted(weights, key=int)],
                              workdir=work,
                              commands={n: _display(p.args) for n, p in procs.items()},
                              killed=killed, left_running=left,
                              peak_processes=memory.peak_count,
                              peak_memory_mb=memory.peak_bytes / 2**20,
                              seconds=time.perf_counter() - started)
    say("every process stopped" + ("" if not left else f" EXCEPT {left}"))
    return result


def _prepare(work: Path, num_clients: int, seed: int, batch_size: int) -> None:
    """The working folder every process runs in: a copy of the Flower project (`app/`), one
    data file per node (`node-<i>.npz`) and the initial model (`initial.npz`)."""
    shutil.rmtree(work / "app", ignore_errors=True)
    for stale in ("results.json", "results.npz"):
        (work / stale).unlink(missing_ok=True)
    shutil.copytree(APP_DIR, work / "app", ignore=shutil.ignore_patterns("__pycache__"))
    for i, arrays in enumerate(node_data(num_clients, seed, batch_size)):
        np.savez(work / f"node-{i}.npz", **arrays)
    weights = digits_model(seed).get_weights()   # TensorFlow: the kernel has it already
    np.savez(work / "initial.npz", **{str(i): w for i, w in enumerate(weights)})


def _command(name: str, env: dict) -> str:
    """Flower's command `name` (or this Python for "python") as a full path: this
    interpreter's bin folder comes first on PATH, so a venv need not be activated."""
    return sys.executable if name == "python" else find_command(name, env, INSTALL_HINT)


def _start(command: list, work: Path, log: str, env: dict) -> subprocess.Popen:
    return start([_command(command[0], env)] + command[1:], work, log, env)


def _environment(work: Path, tag: str) -> dict:
    """Environment of every process: offline, quiet, tagged, with its own Flower home."""
    bin_dir = Path(sys.executable).parent
    # Flower starts its helpers (flower-superexec, flwr-serverapp, flwr-clientapp) by name.
    path = os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")])
    return {**os.environ, **FLOWER_ENV, TAG_VARIABLE: tag, "PATH": path,
            "FLWR_HOME": str(work / "flwr-home")}


def _launch(procs: dict, num_clients: int, run_config: str, work: Path, env: dict, say,
            prepare) -> None:
    """Start the SuperLink (and `prepare` the working folder while it boots), submit the app
    with `flwr run`, then start the SuperNodes, each with its long-lived ClientApp process.
    The app goes first because its ServerApp is the longest chain to start; it waits for the
    nodes to connect."""
    http_port, fleet_port, *node_ports = free_ports(2 + num_clients)
    _write_connection(Path(env["FLWR_HOME"]), http_port)
    procs["superlink"] = _start(
        ["flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(http_port),
         "--fleet-api-address", f"127.0.0.1:{fleet_port}",
         "--disable-runtime-dependency-installation"], work, "superlink.log", env)
    prepare()
    wait_for_port(http_port, procs["superlink"], work / "superlink.log")
    say(f"SuperLink up: Fleet API (gRPC) on 127.0.0.1:{fleet_port}, "
        f"Control API on 127.0.0.1:{http_port}")
    procs["flwr-run"] = _start(["flwr", "run", "app", "course", "--run-config", run_config],
                               work, "flwr-run.log", env)
    for i, port in enumerate(node_ports):
        procs[f"supernode-{i}"] = _start(
            ["flower-supernode", "--insecure", "--grpc-rere",
             "--superlink", f"127.0.0.1:{fleet_port}", "--isolation", "process",
             "--host", "127.0.0.1", "--port", str(port),
             "--node-config", f'data-path="node-{i}.npz"'], work, f"supernode-{i}.log", env)
        # The node's one long-lived ClientApp process (Flower's `process` isolation).
        procs[f"clientapp-{i}"] = _start(
            ["python", "-m", "fedutils.bridges.flower.clientapp_worker",
             "--runtime-api-address", f"127.0.0.1:{port}"], work, f"clientapp-{i}.log", env)
    say(f"app submitted with `flwr run`; {num_clients} SuperNodes started, one per client, "
        "each with one ClientApp process")


def _follow(procs: dict, work: Path, rounds: int, round_timeout: float,
            kill_client: Optional[int], kill_round: int, killed: list, timeout: float,
            say) -> None:
    """Print each round as the ServerApp records it, until it writes "done"; kill the chosen
    node as soon as round `kill_round`'s training goes out. Raise if the app fails to start,
    stops early, or the run takes longer than `timeout`."""
    deadline = time.monotonic() + timeout
    results, shown, seen_server, next_check = work / "results.json", 0, False, 0.0
    while True:
        state = read_json(results)
        finished = [r for r in state.get("rounds", []) if "accuracy" in r]
        for record in finished[shown:]:
            say(_describe(record, rounds, round_timeout))
        shown = len(finished)
        if state.get("done"):
            return
        if (kill_client is not None and not killed
                and state.get("now", [0])[0] >= kill_round):   # its training has gone out
            for part in ("supernode", "clientapp"):    # the whole device dies
                kill_session(procs[f"{part}-{kill_client}"])
            killed.append(kill_client)
            say(f"  killed SuperNode {kill_client} and its ClientApp (SIGKILL, no goodbye) as "
                f"round {kill_round}'s training went out")
        submitted = procs["flwr-run"].poll()
        if submitted not in (None, 0):
            raise RuntimeError(f"`flwr run` failed; see {work / 'flwr-run.log'}")
        if time.monotonic() > next_check:    # walking the process tree costs CPU: once a second
            next_check = time.monotonic() + 1.0
            running = descendant_running(procs["superlink"], "flwr-serverapp")
            seen_server = seen_server or running
            if seen_server and not running and not read_json(results).get("done"):
                raise RuntimeError("the ServerApp stopped before the run was done; see "
                                   f"{work / 'superlink.log'}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the federation did not finish in {timeout:.0f} s; logs are "
                               f"in {work}")
        # Once the round before the kill is under way, look often: the node must die before
        # it can reply to the kill round's training (its reply takes at least half a second).
        kill_soon = (kill_client is not None and not killed
                     and state.get("now", [0])[0] >= kill_round - 1)
        time.sleep(0.05 if kill_soon else 0.2)


def _describe(record: dict, rounds: int, round_timeout: float) -> str:
    """Two lines per round: who was asked, who replied, and the federated accuracy."""
    lines = [f"  round {record['round']}/{rounds}"]
    for step, examples in (("train", "training examples"), ("evaluate", "held-out examples")):
        s = record[step]
        text = (f"    {step + ':':<9} {s['replied']} of {s['asked']} nodes replied "
                f"({s['examples']} {examples})")
        if s["errors"]:
            text += f", {s['errors']} with an error"
        if s["missing"]:
            text += (f"; {s['missing']} silent, so the server waited out the "
                     f"{round_timeout:g} s timeout")
        lines.append(text)
    lines[-1] += f"; accuracy {record['accuracy']:.3f}"
    return "\n".join(lines)


def require_flower() -> None:
    """Raise a RuntimeError that says what to do if Flower (the pinned version) is missing."""
    try:
        import flwr
    except ImportError:
        raise RuntimeError(
            "Flower is not installed here. It needs protobuf >= 5, which TensorFlow 2.14 (the "
            "TFF environment) cannot use: run this in the current-TensorFlow environment "
            "(`make setup-modern`, kernel 'Python 3 (FL course, current TF)') or on Colab."
        ) from None
    if flwr.__version__ != FLOWER_VERSION:
        raise RuntimeError(f"the course's Flower app is written for flwr=={FLOWER_VERSION}, "
                           f"found {flwr.__version__}: pip install flwr=={FLOWER_VERSION}")
    if not (APP_DIR / "pyproject.toml").exists():
        raise RuntimeError(f"the Flower app is missing from {APP_DIR}: reinstall fedutils")


def _display(args: list) -> str:
    """A command line as a learner would type it: program names, not the venv's full paths."""
    return shlex.join([Path(args[0]).name] + [str(a) for a in args[1:]])


def _write_connection(flwr_home: Path, http_port: int) -> None:
    """The `flwr` CLI reads SuperLink addresses from $FLWR_HOME/config.toml."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        '[superlink]\ndefault = "course"\n\n[superlink.course]\n'
        f'address = "127.0.0.1:{http_port}"\ninsecure = true\n')


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--round-timeout", type=float, default=12.0,
                        help="seconds the server waits for the replies of one step")
    parser.add_argument("--kill-client", type=int, default=None,
                        help="partition id of a SuperNode to kill mid-run")
    parser.add_argument("--kill-round", type=int, default=2)
    parser.add_argument("--compare", action="store_true",
                        help="also run fedutils.run_fedavg on the same split and compare")
    args = parser.parse_args(argv)
    from fedutils import quiet_native_logs

    with quiet_native_logs():   # TensorFlow's C++ start-up notices (the initial model)
        import tensorflow  # noqa: F401
    result = run_federation(args.clients, args.rounds, seed=args.seed,
                            round_timeout=args.round_timeout, kill_client=args.kill_client,
                            kill_round=args.kill_round)
    print(f"logs: {result.workdir}")
    print(f"at most {result.peak_processes} processes at once, "
          f"{result.peak_memory_mb:.0f} MB of memory together")
    if args.compare:
        history = simulate(args.clients, args.rounds, seed=args.seed,
                           lost_client=result.killed[0] if result.killed else None,
                           lost_from_round=args.kill_round)
        diff = max(float(np.max(np.abs(a - b)))
                   for a, b in zip(result.final_weights, history.final_weights))
        agree = diff < 1e-5
        print(f"fedutils.run_fedavg{' (the same crash)' if result.killed else ''}: largest "
              f"weight difference from Flower {diff:.1e} ({'within' if agree else 'OUTSIDE'} "
              "the stated tolerance 1e-5)")
        if not agree:
            return 1
    return 1 if result.left_running else 0


if __name__ == "__main__":
    sys.exit(main())
