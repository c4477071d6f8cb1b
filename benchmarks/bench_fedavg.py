#!/usr/bin/env python
"""FedAvg speed: fedutils vs Flower's simulation vs TensorFlow Federated vs the centralized limit.

Setting (the same for every method): digits (1,347 training examples after a stratified 25 %
hold-out), the dense 64-64-10 model from the same initial weights, batch 20, one local epoch of
plain SGD at learning rate 0.1, server learning rate 1, IID clients, every client in every round
(so each round processes exactly the examples of one centralized epoch).

Methods:
- keras_fit   the centralized limit as usually measured: one `model.fit` epoch per round
- central     centralized training in fedutils' own compiled loop (one client holding all the
              data): the floor for this implementation, with no per-client cost at all
- fedutils    `fedutils.fedavg.run_fedavg` (compiled fast path): the round's clients train
              side by side and the default weighted mean is computed inside the round. At 100
              and 1,000 clients every client holds fewer than 20 examples, so it takes one
              step, and the mean of one-step updates is one gradient over all their examples
              (FedSGD's identity, exact): no per-client weights are formed at all
- fedutils_per_client  the same, but aggregated by a plain-function weighted mean, which (like
              robust aggregation, compression or DP) receives every client's update: the
              stacked per-client path without that shortcut
- tff         TFF 0.87 `build_weighted_fed_avg` (where TFF is installed)
- flower      the course's Flower app (fedutils/bridges/flower/app: NumPy client training,
              checked equal to fedutils' client_update) under Flower 1.39's simulation engine
              (Ray; one virtual SuperNode per client, at most 2 Ray actors, federated
              evaluation off), run as `flwr run` runs it on a local simulation federation, in
              the current-TensorFlow environment (.venv-modern). This process writes the
              initial weights and the client partitions for it (Keras 2 and 3 initialize
              differently) and evaluates its final weights.

Each (method, clients) pair runs in a fresh subprocess, with the interpreter it needs, so peak
memory is its own (TFF's includes its worker_binary helper, Flower's every Ray process).
Seconds per round are the median over the rounds after the first (the first includes tracing,
compilation or Ray's start-up, reported separately); Flower's are measured inside its
ServerApp, from one round's start to the next. The results go to a JSON file (with the goals
of issue 18 and whether they are met), a markdown table and a plot (fedavg.png).

    python benchmarks/bench_fedavg.py                 # 10, 100, 1000 clients; 20 rounds
    python benchmarks/bench_fedavg.py --clients 10 --rounds 5 --methods fedutils flower
    python benchmarks/bench_fedavg.py --plot-only     # redraw fedavg.png from fedavg.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from course import PeakMemory  # noqa: E402

# Every process of one Flower run carries a tag in its environment, as lesson 15's do.
from fedutils.bridges.flower.processes import TAG_VARIABLE, tagged  # noqa: E402
METHODS = ("keras_fit", "central", "fedutils", "fedutils_per_client", "tff", "flower")
MODERN_PYTHON = ROOT / ".venv-modern" / "bin" / "python"   # Keras 3, Flower 1.39, Ray
APP_DIR = ROOT / "fedutils" / "bridges" / "flower" / "app"
GOAL_CLIENTS, GOAL_SPEEDUP, GOAL_ACCURACY = 100, 20.0, 0.01


def interpreter(method: str) -> str:
    """The Python a method runs in: Flower's simulation in the current-TF environment, the
    others in this one (the TFF environment)."""
    return str(MODERN_PYTHON) if method == "flower" else sys.executable


def flower_missing() -> Optional[str]:
    """Why the `flower` method cannot run here, or None."""
    if not MODERN_PYTHON.exists():
        return f"no current-TF environment ({MODERN_PYTHON.relative_to(ROOT)}; make setup-modern)"
    probe = "import importlib.util as u, sys; sys.exit(0 if u.find_spec('ray') else 1)"
    if subprocess.run([str(MODERN_PYTHON), "-c", probe]).returncode:
        return "Ray is not installed in .venv-modern (pip install -r requirements-modern.txt)"
    return None


def setting(num_clients: int):
    import fedutils
    from fedutils import data, models

    split = data.federated_digits(num_clients, "iid", batch_size=20, seed=0)
    fedutils.set_seed(0)
    initial = models.create_digits_model().get_weights()
    return (split.x_train, split.y_train), (split.x_test, split.y_test), split.clients, initial


def run_method(method: str, num_clients: int, rounds: int) -> dict:
    """Run one method of the TFF environment in this process; return its timings and final
    accuracy."""
    import numpy as np
    import tensorflow as tf

    from fedutils import fedavg, models

    monitor = PeakMemory()
    monitor.start()
    started = time.perf_counter()
    train, test, datasets, initial = setting(num_clients)
    model = models.create_digits_model()
    model.set_weights(initial)
    seconds = []
    if method == "keras_fit":
        model.compile(optimizer=tf.keras.optimizers.SGD(0.1),
                      loss=tf.keras.losses.SparseCategoricalCrossentropy())
        # The examples in the clients' order, so each epoch sees what one FL round sees.
        x_all = np.concatenate([c.x for c in datasets])
        y_all = np.concatenate([c.y for c in datasets])
        for _ in range(rounds):
            t = time.perf_counter()
            model.fit(x_all, y_all, batch_size=20, epochs=1, shuffle=False, verbose=0)
            seconds.append(time.perf_counter() - t)
        weights = model.get_weights()
    elif method in ("central", "fedutils", "fedutils_per_client"):
        if method == "central":
            from fedutils.data import make_client_data

            xtr, ytr = train
            datasets = make_client_data(xtr, ytr, [np.arange(len(ytr))], batch_size=20)
        every_update = (lambda updates, counts, ids, rng:  # noqa: E731
                        fedavg.server_aggregate(updates, counts))
        history = fedavg.run_fedavg(model, datasets, rounds=rounds, initial_weights=initial,
                                    progress=False, aggregator=every_update
                                    if method == "fedutils_per_client" else None)
        seconds = history["seconds"]
        weights = history.final_weights
    elif method == "tff":
        from fedutils import tff_bridge

        tff_bridge.import_tff()
        datasets = [c.dataset() for c in datasets]
        spec = datasets[0].element_spec
        process = tff_bridge.build_fedavg(models.create_digits_model, spec, client_lr=0.1,
                                          server_lr=1.0)
        state = tff_bridge.set_weights(process, process.initialize(), initial)
        for _ in range(rounds):
            t = time.perf_counter()
            state = process.next(state, datasets).state
            seconds.append(time.perf_counter() - t)
        weights = tff_bridge.get_weights(process, state, model)
    else:
        raise ValueError(f"method must be one of {METHODS[:-1]}, got {method!r}")
    total = time.perf_counter() - started
    _, accuracy = fedavg.evaluate_weights(model, weights, *test)
    monitor.done.set()
    return summary(method, num_clients, rounds, seconds, total, accuracy, monitor.peak)


def summary(method: str, clients: int, rounds: int, seconds: list, total: float,
            accuracy: Optional[float], peak_bytes: int) -> dict:
    """One result row: the median seconds over the rounds after the first, the first apart."""
    import numpy as np

    steady = seconds[1:] if len(seconds) > 1 else seconds
    return {"method": method, "clients": clients, "rounds": rounds,
            "seconds_per_round": float(np.median(steady)), "first_round_seconds": seconds[0],
            "total_seconds": total, "accuracy": accuracy,
            "peak_memory_mb": round(peak_bytes / 2**20)}


# --- Flower's simulation engine: the worker runs in .venv-modern and imports neither TF nor
# fedutils; this (TFF) environment writes its inputs and evaluates its final weights ----------

def write_flower_setting(work: Path, num_clients: int):
    """The initial weights (`initial.npz`, as the app reads them) and every client's examples
    in batch order (`partitions.npz`: `x_train-<i>`, `y_train-<i>`), written by the TFF
    environment so Flower starts from exactly fedutils' model and split; returns the test set."""
    import numpy as np

    _, test, datasets, initial = setting(num_clients)
    np.savez(work / "initial.npz", **{str(i): w for i, w in enumerate(initial)})
    np.savez(work / "partitions.npz",
             **{f"{name}-{i}": a for i, c in enumerate(datasets)
                for name, a in (("x_train", c.x), ("y_train", c.y))})
    return test


def simulate_app(num_supernodes: int, overrides: dict, backend_config: dict) -> None:
    """Run the app in APP_DIR as `flwr run` runs it on a local simulation federation: this is
    what Flower 1.39's simulation process (flwr/simulation/app.py) calls once the SuperLink has
    handed it the run, without the SuperLink (which `flwr run` would leave running, detached,
    on a fixed port). `flwr.simulation.run_simulation` runs the same engine but gives the apps
    an empty run config."""
    from flwr.app import Context, RecordDict
    from flwr.common.config import get_fused_config_from_dir, get_project_config
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.constant import NOOP_FEDERATION_ID
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.supercore.telemetry import EventType

    run = Run.create_empty(run_id=1)
    run.override_config, run.primary_task_id, run.federation_id = overrides, 1, NOOP_FEDERATION_ID
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    components = get_project_config(APP_DIR)["tool"]["flwr"]["app"]["components"]
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config=get_fused_config_from_dir(APP_DIR, overrides))
    _run_simulation(num_supernodes=num_supernodes, exit_event=EventType.FLWR_SIMULATION_RUN_LEAVE,
                    server_app_attr=components["serverapp"],
                    client_app_attr=components["clientapp"], backend_config=backend_config,
                    app_dir=str(APP_DIR), run=run, server_app_context=context, is_app=True)


def run_flower(num_clients: int, rounds: int, work: Path) -> dict:
    """The Flower app on `num_clients` virtual SuperNodes for `rounds` rounds, from the files
    `write_flower_setting` left in `work`; per-round seconds from the ServerApp's record.
    Ray gets 2 CPUs (so at most 2 actors, one CPU per client), no dashboard, a 100 MB object
    store and its session files in `work`; it is shut down before this returns."""
    os.environ.update({"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                       "RAY_USAGE_STATS_ENABLED": "0", "FLWR_HOME": str(work / "flwr-home")})
    overrides = {"num-server-rounds": rounds, "min-nodes": num_clients, "local-epochs": 1,
                 "client-lr": 0.1, "batch-size": 20, "round-timeout": 3600.0,
                 "fraction-evaluate": 0.0, "initial-weights": str(work / "initial.npz"),
                 "partitions": str(work / "partitions.npz"),
                 "results-path": str(work / "flower.json")}
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"num_cpus": 2, "num_gpus": 0, "include_dashboard": False,
                             "logging_level": "error", "log_to_driver": False,
                             "object_store_memory": 100 * 2**20,
                             "_temp_dir": str(work / "ray")}}
    tag = os.environ.setdefault(TAG_VARIABLE, uuid.uuid4().hex)   # inherited by Ray's processes
    monitor = TaggedPeakMemory(tag)   # this process, Ray's GCS, raylet, workers and actors
    monitor.start()
    started = time.perf_counter()
    try:
        simulate_app(num_clients, overrides, backend)
    finally:
        monitor.done.set()
        shut_down_ray(tag)
    total = time.perf_counter() - started
    record = json.loads((work / "flower.json").read_text())
    for r in record["rounds"]:   # every client trained in every round, none failed
        if r["train"]["replied"] != num_clients or r["train"]["errors"]:
            raise RuntimeError(f"Flower round {r['round']}: {r['train']}")
    starts = [r["started"] for r in record["rounds"]] + [record["finished"]]
    seconds = [b - a for a, b in zip(starts, starts[1:])]
    result = summary("flower", num_clients, rounds, seconds, total, None, monitor.peak)
    return {**result, "weights_path": str(work / record["weights_path"])}


def shut_down_ray(tag: str, grace: float = 15.0) -> None:
    """Stop Ray and wait until every process of this run (`tag`) but this one has exited: Ray's
    actors outlive `ray.shutdown` by a few seconds, re-parented away from this process. Kill
    what is left after `grace` seconds."""
    import ray

    ray.shutdown()
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(p.pid != os.getpid() for p in tagged(tag)):
        time.sleep(0.2)
    left = stop_tagged(tag, keep=os.getpid())
    if left:
        print(f"killed {len(left)} Ray processes still running {grace:g} s after shutdown")


def flower_accuracy(result: dict, test) -> dict:
    """Evaluate the Flower run's final weights with `fedutils.fedavg.evaluate_weights` (here,
    in the TFF environment, like every other method's)."""
    import numpy as np

    from fedutils import fedavg, models

    saved = np.load(result.pop("weights_path"))
    weights = [saved[k] for k in sorted(saved.files, key=int)]
    _, accuracy = fedavg.evaluate_weights(models.create_digits_model(), weights, *test)
    return {**result, "accuracy": accuracy}


def stop_tagged(tag: str, keep: Optional[int] = None) -> list[str]:
    """Kill every process still carrying the run's `tag` (but `keep`); return their command
    lines (none expected: the worker waits for Ray's processes to exit)."""
    import psutil

    left = []
    for p in tagged(tag):
        try:
            if p.pid != keep:
                left.append(" ".join(p.cmdline()).strip()[:120])
                p.kill()
        except psutil.Error:
            continue
    return left


class TaggedPeakMemory(PeakMemory):
    """The peak of the summed resident memory of every process carrying `tag`: this process
    and everything Ray starts, wherever Ray re-parents it (its actors are not always below
    this process, so PeakMemory's process tree could miss them). Sampled every 0.1 s."""

    def __init__(self, tag: str):
        super().__init__()
        self.tag = tag

    def run(self) -> None:
        import psutil

        while not self.done.wait(0.1):
            total = 0
            for p in tagged(self.tag):
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)


# --- running each (method, clients) pair in its own process -----------------------------------

def in_subprocess(method: str, clients: int, rounds: int, timeout: float) -> dict:
    """Run one method in a fresh process with its interpreter; a failure becomes a
    "skipped: ..." row. Afterwards no process of the run may be left (TFF's helpers, Ray's):
    any that is gets killed and listed in the row as `left_running`."""
    with tempfile.TemporaryDirectory() as tmp:
        tag = uuid.uuid4().hex
        try:
            result = attempt(method, clients, rounds, timeout, Path(tmp), tag)
        finally:
            from fedutils.bridges.tff_workers import stop_workers

            stop_workers(since=time.time() - timeout - 60)
            left = stop_tagged(tag)
        return {**result, "left_running": left} if left else result


def attempt(method: str, clients: int, rounds: int, timeout: float, work: Path,
            tag: str) -> dict:
    """One worker process for (method, clients, rounds), its files in `work`, `tag` in its
    environment (inherited by everything it starts)."""
    out, log = work / "result.json", work / "log.txt"
    cmd = [interpreter(method), __file__, "--worker", method, str(clients), str(rounds),
           str(out)]
    try:
        test = write_flower_setting(work, clients) if method == "flower" else None
        with open(log, "w") as stream:  # a file, not a pipe: TFF's helper would hold it
            subprocess.run(cmd, stdout=stream, stderr=subprocess.STDOUT, timeout=timeout,
                           check=True, env={**os.environ, TAG_VARIABLE: tag})
        result = json.loads(out.read_text())
        return flower_accuracy(result, test) if method == "flower" else result
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        tail = log.read_text()[-800:] if log.exists() else ""
        return {"method": method, "clients": clients, "rounds": rounds,
                "skipped": f"{type(exc).__name__}: {tail.strip().splitlines()[-1:] or ''}"}


# --- the table, the goals, the plot ---------------------------------------------------------

def ok(r: Optional[dict]) -> bool:
    return r is not None and "skipped" not in r


def table(results: list[dict]) -> str:
    """The markdown table: one row per (clients, method), speed ratios to the other methods."""
    by = {(r["method"], r["clients"]): r for r in results}
    lines = ["| clients/round | method | rounds | s/round | × keras_fit | × central | "
             "TFF ÷ this | Flower ÷ this | accuracy | first round s | peak MB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for clients in sorted({r["clients"] for r in results}):
        for method in METHODS:
            r = by.get((method, clients))
            if r is None:
                continue
            if "skipped" in r:
                lines.append(f"| {clients} | {method} | | skipped: {r['skipped']} ||||||||")
                continue
            s = r["seconds_per_round"]

            def ratio(other, inverse=False):
                o = by.get((other, clients))
                if not ok(o):
                    return "–"
                return f"{(o['seconds_per_round'] / s) if inverse else (s / o['seconds_per_round']):.2f}"

            lines.append(f"| {clients} | {method} | {r['rounds']} | {s:.4f} | "
                         f"{ratio('keras_fit')} | {ratio('central')} | "
                         f"{ratio('tff', inverse=True)} | {ratio('flower', inverse=True)} | "
                         f"{r['accuracy']:.3f} | {r['first_round_seconds']:.2f} | "
                         f"{r['peak_memory_mb']} |")
    return "\n".join(lines)


def goals(results: list[dict]) -> dict:
    """Issue 18's goals, measured: fedutils ≤ 1.0× central at 10, 100 and 1,000 clients per
    round; at 100, fedutils ≥ 20× faster than TFF and than Flower with the same final accuracy
    (within 1 point). A goal whose rows are missing or skipped is None, not False."""
    by = {(r["method"], r["clients"]): r for r in results if ok(r)}

    def speed(slow, fast, clients):
        a, b = by.get((slow, clients)), by.get((fast, clients))
        return a["seconds_per_round"] / b["seconds_per_round"] if a and b else None

    over_central = {str(c): speed("fedutils", "central", c) for c in (10, 100, 1000)}
    mine = by.get(("fedutils", GOAL_CLIENTS))
    out = {"fedutils_over_central": over_central,
           "fedutils_at_most_central": (None if None in over_central.values()
                                        else all(v <= 1.0 for v in over_central.values())),
           "accuracy_at_100": {m: by[(m, GOAL_CLIENTS)]["accuracy"]
                               for m in METHODS if (m, GOAL_CLIENTS) in by}}
    for other in ("tff", "flower"):
        times = speed(other, "fedutils", GOAL_CLIENTS)
        theirs = by.get((other, GOAL_CLIENTS))
        out[f"{other}_over_fedutils_at_100"] = times
        out[f"fedutils_20x_faster_than_{other}_at_100"] = (
            None if times is None else times >= GOAL_SPEEDUP)
        out[f"same_accuracy_as_{other}_at_100"] = (
            None if not (mine and theirs) else
            abs(mine["accuracy"] - theirs["accuracy"]) <= GOAL_ACCURACY)
    return out


def goal_lines(g: dict) -> str:
    """The goals as a markdown list with their measured values."""
    def num(v, fmt):
        return "–" if v is None else format(v, fmt)

    def met(v):
        return "not measured" if v is None else ("met" if v else "NOT met")

    acc = g["accuracy_at_100"]
    central = ", ".join(f"{num(v, '.2f')}{'×' * (v is not None)} at {c}"
                        for c, v in g["fedutils_over_central"].items())
    lines = [f"- fedutils ≤ 1.0× the pooled floor (central) at 10, 100 and 1,000 clients per "
             f"round: {central} — {met(g['fedutils_at_most_central'])}"]
    for other, name in (("tff", "TFF"), ("flower", "Flower's simulation")):
        times = g[f"{other}_over_fedutils_at_100"]
        lines.append(
            f"- fedutils ≥ 20× faster than {name} at 100 clients per round: "
            f"{num(times, '.1f')}{'×' * (times is not None)} — "
            f"{met(g[f'fedutils_20x_faster_than_{other}_at_100'])}; same accuracy (within 1 "
            f"point): {num(acc.get('fedutils'), '.3f')} vs {num(acc.get(other), '.3f')} — "
            f"{met(g[f'same_accuracy_as_{other}_at_100'])}")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """fedavg.png: seconds per round vs clients per round (log–log, one line per method) and
    peak memory per method and clients count (grouped bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in report["results"] if ok(r)]
    counts = sorted({r["clients"] for r in rows})
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for m in methods:
        mine = sorted((r["clients"], r["seconds_per_round"]) for r in rows if r["method"] == m)
        left.plot(*zip(*mine), "o-", label=m)
    left.set(xscale="log", yscale="log", xlabel="clients per round",
             ylabel="seconds per round (median)", title="Speed")
    left.grid(True, which="both", alpha=0.3)
    left.legend()
    width = 0.8 / max(len(methods), 1)
    for i, m in enumerate(methods):
        mb = {r["clients"]: r["peak_memory_mb"] for r in rows if r["method"] == m}
        right.bar(np.arange(len(counts)) + i * width, [mb.get(c, 0) for c in counts], width,
                  label=m)
    right.set_xticks(np.arange(len(counts)) + width * (len(methods) - 1) / 2,
                     [str(c) for c in counts])
    right.set(xlabel="clients per round", ylabel="peak memory (MB, all of a run's processes)",
              title="Memory")
    right.set_ylim(0, 1.35 * max([r["peak_memory_mb"] for r in rows], default=1))  # legend room
    right.legend(fontsize="small", loc="upper left", ncol=3)
    fig.suptitle(f"FedAvg on digits, {report['machine']}", fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(report: dict, image: str) -> str:
    """fedavg.md: the plot above the table, the goals with their measured values, notes."""
    return (f"# FedAvg benchmark\n\n{report['machine']}, {report['when']}. `make bench` "
            f"(benchmarks/bench_fedavg.py).\n\n![seconds per round vs clients per round, and "
            f"peak memory, per method]({image})\n\n{table(report['results'])}\n\n"
            f"Goals (issue 18):\n\n{goal_lines(report['goals'])}\n\n"
            "Notes: fedutils computes the default weighted mean inside the compiled round; "
            "at 100 and 1,000 clients every client has fewer than 20 examples and takes one "
            "step, and the mean of one-step updates is exactly one gradient over all their "
            "examples (FedSGD's identity), so no per-client weights are formed. "
            "`fedutils_per_client` is the same run with the mean written as a plain-function "
            "aggregator, which receives every client's update (as robust aggregation, "
            "compression and DP do): clients side by side, weights stacked per client. "
            "`rounds` is fewer for TFF and Flower at 1,000 clients (each round takes "
            "seconds); accuracy is on the same test split after that many rounds. Flower runs "
            "the course's NumPy ClientApp under Flower 1.39's simulation engine (Ray, at most 2 "
            "actors, federated evaluation off) in the current-TF environment; its in-memory grid "
            "checks for replies every 0.1 s, so none of its rounds is shorter. Peak memory is "
            "the summed resident memory of each run's processes (shared pages count in every "
            "process that touches them): for Flower, every process carrying the run's tag in "
            "its environment (its driver, Ray's GCS, raylet, workers and actors, sampled every "
            "0.1 s), with no TensorFlow; for the others, the worker's process tree.\n")


# --- command line ----------------------------------------------------------------------------

def worker(argv: list[str]) -> int:
    """`--worker METHOD CLIENTS ROUNDS OUT`: run one method here, write its row to OUT."""
    method, clients, rounds, out = argv[0], int(argv[1]), int(argv[2]), Path(argv[3])
    if method == "flower":
        result = run_flower(clients, rounds, out.parent)
    else:
        result = run_method(method, clients, rounds)
    out.write_text(json.dumps(result))
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return worker(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--tff-rounds-1000", type=int, default=3,
                        help="rounds for TFF at 1,000 clients (each takes many seconds)")
    parser.add_argument("--flower-rounds-1000", type=int, default=5,
                        help="rounds for Flower at 1,000 clients (each takes seconds)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--timeout", type=float, default=900, help="seconds per run")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fedavg.json")
    parser.add_argument("--plot-only", action="store_true",
                        help="only redraw the plot (OUT with .png) from the JSON in OUT")
    args = parser.parse_args()
    if args.plot_only:
        plot(json.loads(args.out.read_text()), args.out.with_suffix(".png"))
        return 0
    sys.path.insert(0, str(ROOT))
    from fedutils.tff_bridge import tff_available

    missing = {"tff": None if tff_available() else "TFF is not installed in this environment",
               "flower": flower_missing() if "flower" in args.methods else None}
    few = {"tff": args.tff_rounds_1000, "flower": args.flower_rounds_1000}
    results = []
    for clients in args.clients:
        for method in args.methods:
            if missing.get(method):
                results.append({"method": method, "clients": clients, "rounds": 0,
                                "skipped": missing[method]})
                continue
            rounds = few[method] if (method in few and clients >= 1000) else args.rounds
            result = in_subprocess(method, clients, rounds, args.timeout)
            results.append(result)
            print(json.dumps(result), flush=True)
    import platform

    import psutil

    report = {"machine": f"{platform.machine()}, {psutil.cpu_count()} cores, "
                         f"Python {platform.python_version()}",
              "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "results": results,
              "goals": goals(results)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    image = args.out.with_suffix(".png")
    plot(report, image)
    args.out.with_suffix(".md").write_text(markdown(report, image.name))
    print(table(results))
    print(goal_lines(report["goals"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
