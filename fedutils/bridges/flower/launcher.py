"""Run the course's Flower app (`fedutils/bridges/flower/app/`) as a real federation on this machine.

One SuperLink (Flower's server) and N SuperNodes (its clients) each run as a separate process
and talk gRPC over loopback, exactly as they would across machines; `flwr run` submits the app,
the SuperLink starts the ServerApp (weighted FedAvg) and each SuperNode starts the ClientApp
(`fedutils.loop.client.client_update`) for every message it receives. Nothing here simulates:
these are Flower's own deployment processes. `run_federation` starts them, follows the
rounds, and stops every process it started, whatever happens; `task.simulate` runs
`fedutils.run_fedavg` on the same split and seeds so the two can be compared.

Flower needs protobuf 5 or newer, which TensorFlow 2.14 (and so TFF) cannot use: this module
works in the current-TensorFlow environment (`make setup-modern`, or Colab).

Command line (`make federation`):
    python -m fedutils.bridges.flower.launcher [--clients 3] [--rounds 3] [--kill-client 2 --kill-round 2]
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import psutil

from fedutils.bridges.flower.task import simulate
from fedutils.core.checks import check_float, check_int

APP_DIR = Path(__file__).resolve().parent / "app"   # a Flower project: pyproject.toml + code
FLOWER_VERSION = "1.39.0"
TAG_VARIABLE = "FEDUTILS_FEDERATION_ID"   # every process of one federation carries it
# Offline and quiet: no usage telemetry, no check for a newer Flower on PyPI.
# (TensorFlow's log settings come from os.environ, where importing fedutils put them.)
FLOWER_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
              "PYTHONUNBUFFERED": "1"}


# ---- running the processes -----------------------------------------------------------------

@dataclass
class FederationResult:
    """What one Flower run produced, as the ServerApp recorded it."""
    rounds: list[dict]                    # per round: clients, failures, accuracy, loss, ...
    initial: dict                         # accuracy and loss of the initial model
    final_weights: list[np.ndarray]
    seconds: float                        # wall time from the first process to the last exit
    workdir: Path                         # logs of every process are here
    commands: dict[str, str] = field(default_factory=dict)  # what was run, one line each
    killed: list[int] = field(default_factory=list)   # partition ids killed mid-round
    left_running: list[str] = field(default_factory=list)  # should always stay empty

    @property
    def accuracies(self) -> list[float]:
        return [self.initial["accuracy"]] + [r["accuracy"] for r in self.rounds]


def run_federation(num_clients: int = 3, rounds: int = 3, local_epochs: int = 1,
                   client_lr: float = 0.1, batch_size: int = 20, seed: int = 0,
                   round_timeout: float = 60.0, kill_client: Optional[int] = None,
                   kill_round: int = 2, timeout: float = 600.0, verbose: bool = True,
                   workdir: Optional[str] = None) -> FederationResult:
    """Start a SuperLink and `num_clients` SuperNodes on 127.0.0.1, run the Flower app for
    `rounds` rounds, stop every process, and return what the ServerApp recorded.

    `round_timeout` is how long the server waits for a round's replies: a client that never
    answers costs at most that. With `kill_client` (a partition id), that SuperNode is killed
    (SIGKILL, no goodbye) while it trains in round `kill_round`, to show the server carries on.
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
    results_path = work / "results.json"
    results_path.unlink(missing_ok=True)
    tag = uuid.uuid4().hex
    env = _environment(work, tag)
    run_config = (f"num-server-rounds={rounds} local-epochs={local_epochs} "
                  f"client-lr={client_lr} batch-size={batch_size} seed={seed} "
                  f"round-timeout={round_timeout} min-nodes={num_clients} "
                  f'results-path="{results_path}"')
    say = print if verbose else (lambda *a, **k: None)

    started = time.perf_counter()
    procs: dict[str, subprocess.Popen] = {}
    killed: list[int] = []
    try:
        _launch(procs, num_clients, run_config, work, env, say)
        _follow(procs, results_path, rounds, kill_client, kill_round, killed, timeout, say,
                work)
    finally:
        left = _stop_all(procs, tag)
    state = _read_json(results_path)
    weights = np.load(state["weights_path"])
    result = FederationResult(rounds=state["rounds"], initial=state["initial"],
                              final_weights=[weights[k] for k in sorted(weights, key=int)],
                              seconds=time.perf_counter() - started, workdir=work,
                              commands={n: _display(p.args) for n, p in procs.items()},
                              killed=killed, left_running=left)
    say(f"done in {result.seconds:.1f} s; every process stopped"
        + ("" if not left else f" EXCEPT {left}"))
    return result


def _executable(name: str, env: dict) -> str:
    """Flower's command `name` from this interpreter's environment (its bin folder first: a
    venv need not be activated; on Colab the commands live in /usr/local/bin)."""
    found = shutil.which(name, path=env["PATH"])
    if found is None:
        raise RuntimeError(f"Flower's command {name!r} was not found next to {sys.executable} "
                           f"or on PATH: pip install flwr=={FLOWER_VERSION}")
    return found


def _environment(work: Path, tag: str) -> dict:
    """Environment of every process: offline, quiet, tagged, with its own Flower home."""
    bin_dir = Path(sys.executable).parent
    # Flower starts its helpers (flower-superexec, flwr-serverapp, flwr-clientapp) by name.
    path = os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")])
    return {**os.environ, **FLOWER_ENV, TAG_VARIABLE: tag, "PATH": path,
            "FLWR_HOME": str(work / "flwr-home")}


def _launch(procs: dict, num_clients: int, run_config: str, work: Path, env: dict,
            say) -> None:
    """Start the SuperLink, then the SuperNodes, then submit the app with `flwr run`."""
    http_port, fleet_port, *node_ports = _free_ports(2 + num_clients)
    _write_connection(Path(env["FLWR_HOME"]), http_port)
    procs["superlink"] = _start(
        [_executable("flower-superlink", env), "--insecure", "--host", "127.0.0.1",
         "--port", str(http_port), "--fleet-api-address", f"127.0.0.1:{fleet_port}",
         "--disable-runtime-dependency-installation"], work / "superlink.log", env)
    _wait_for_port(http_port, procs["superlink"], work / "superlink.log")
    say(f"SuperLink up: Fleet API (gRPC) on 127.0.0.1:{fleet_port}, "
        f"Control API on 127.0.0.1:{http_port}")
    for i, port in enumerate(node_ports):
        procs[f"supernode-{i}"] = _start(
            [_executable("flower-supernode", env), "--insecure", "--grpc-rere",
             "--superlink", f"127.0.0.1:{fleet_port}", "--host", "127.0.0.1",
             "--port", str(port),
             "--node-config", f"partition-id={i} num-partitions={num_clients}"],
            work / f"supernode-{i}.log", env)
    say(f"{num_clients} SuperNodes started (one per client), submitting the app ...")
    procs["flwr-run"] = _start([_executable("flwr", env), "run", str(APP_DIR), "course", "--stream",
                                "--run-config", run_config], work / "flwr-run.log", env)


def _follow(procs: dict, results_path: Path, rounds: int, kill_client: Optional[int],
            kill_round: int, killed: list, timeout: float, say, work: Path) -> None:
    """Print each round as the ServerApp records it, until it writes "done"; kill the chosen
    SuperNode once it trains in `kill_round`. Raise if the run ends early or takes too long."""
    deadline = time.monotonic() + timeout
    shown = 0
    while True:
        state = _read_json(results_path)
        for record in state.get("rounds", [])[shown:]:
            say(_describe(record, rounds))
        shown = len(state.get("rounds", []))
        if state.get("done"):
            return
        if (kill_client is not None and not killed and shown == kill_round - 1
                and _is_training(procs[f"supernode-{kill_client}"])):
            _kill_group(procs[f"supernode-{kill_client}"])
            killed.append(kill_client)
            say(f"  killed SuperNode {kill_client} while it trained in round {kill_round}")
        if procs["flwr-run"].poll() is not None:
            time.sleep(1.0)   # the results file is written just before the run ends
            if not _read_json(results_path).get("done"):
                raise RuntimeError("the Flower run ended without results; see "
                                   f"{work / 'flwr-run.log'} and {work / 'superlink.log'}")
            continue
        if time.monotonic() > deadline:
            raise TimeoutError(f"the federation did not finish in {timeout:.0f} s; logs are "
                               f"in {work}")
        time.sleep(0.2)


def _describe(record: dict, rounds: int) -> str:
    return (f"  round {record['round']}/{rounds}: {record['clients']} of {record['asked']} "
            f"clients replied ({record['num_examples']} examples), test accuracy "
            f"{record['accuracy']:.3f}, {record['seconds']:.1f} s")


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


def _free_ports(count: int) -> list[int]:
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


def _write_connection(flwr_home: Path, http_port: int) -> None:
    """The `flwr` CLI reads SuperLink addresses from $FLWR_HOME/config.toml."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        '[superlink]\ndefault = "course"\n\n[superlink.course]\n'
        f'address = "127.0.0.1:{http_port}"\ninsecure = true\n')


def _start(command: list, log: Path, env: dict) -> subprocess.Popen:
    # A new session per process: stopping it stops the helpers it starts (SuperExec, apps).
    with open(log, "wb") as out:
        return subprocess.Popen([str(c) for c in command], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the SuperLink exited at start-up; see {log}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"the SuperLink did not open port {port} in {seconds:.0f} s; see {log}")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _is_training(supernode: subprocess.Popen) -> bool:
    """Is a ClientApp process (started per message by the SuperNode) running right now?"""
    try:
        children = psutil.Process(supernode.pid).children(recursive=True)
        return any("flwr-clientapp" in " ".join(c.cmdline()) for c in children)
    except psutil.Error:
        return False


def _kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _tagged(tag: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(TAG_VARIABLE) == tag and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


def _stop_all(procs: dict[str, subprocess.Popen], tag: str, grace: float = 10.0) -> list[str]:
    """SIGTERM every process group (clients first), wait, SIGKILL what is left; return the
    command lines of anything still alive afterwards (nothing, unless the OS refused)."""
    for name in sorted(procs, key=lambda n: n == "superlink"):
        _kill_group(procs[name], signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    _, alive = psutil.wait_procs(_tagged(tag), timeout=max(0.1, deadline - time.monotonic()))
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    for proc in procs.values():
        _kill_group(proc)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    psutil.wait_procs(alive, timeout=5)
    left = []
    for p in _tagged(tag):
        try:
            left.append(" ".join(p.cmdline()))
        except psutil.Error:
            continue
    return left


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kill-client", type=int, default=None,
                        help="partition id of a SuperNode to kill mid-round")
    parser.add_argument("--kill-round", type=int, default=2)
    parser.add_argument("--compare", action="store_true",
                        help="also run fedutils.run_fedavg on the same split and compare")
    args = parser.parse_args(argv)
    result = run_federation(args.clients, args.rounds, seed=args.seed,
                            kill_client=args.kill_client, kill_round=args.kill_round)
    print(f"logs: {result.workdir}")
    if args.compare and result.killed:
        print("a client was killed, so fedutils.run_fedavg with every client is not expected "
              "to match; lesson 15 simulates the crash instead")
    elif args.compare:
        from fedutils import quiet_native_logs

        with quiet_native_logs():   # TensorFlow's C++ start-up notices
            import tensorflow  # noqa: F401
        history = simulate(args.clients, args.rounds, seed=args.seed)
        diff = max(float(np.max(np.abs(a - b)))
                   for a, b in zip(result.final_weights, history.final_weights))
        agree = diff < 1e-5
        print(f"fedutils.run_fedavg accuracy {history.accuracy[-1]:.3f} vs Flower "
              f"{result.rounds[-1]['accuracy']:.3f}; largest weight difference {diff:.1e} "
              f"({'within' if agree else 'OUTSIDE'} the stated tolerance 1e-5)")
        if not agree:
            return 1
    return 1 if result.left_running else 0


if __name__ == "__main__":
    sys.exit(main())
