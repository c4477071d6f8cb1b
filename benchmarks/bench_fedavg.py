#!/usr/bin/env python
"""FedAvg speed: fedutils vs TensorFlow Federated vs the centralized limit, in one run.

Setting (the same for every method): digits (1,347 training examples after a stratified 25 %
hold-out), the dense 64-64-10 model from the same initial weights, batch 20, one local epoch of
plain SGD at learning rate 0.1, server learning rate 1, IID clients, every client in every round
(so each round processes exactly the examples of one centralized epoch).

Methods:
- keras_fit   the centralized limit as usually measured: one `model.fit` epoch per round
- central     centralized training in fedutils' own compiled loop (one client holding all the
              data): the floor for this implementation, with no per-client cost at all
- fedutils    `fedutils.fedavg.run_fedavg` (compiled fast path)
- tff         TFF 0.87 `build_weighted_fed_avg` (where TFF is installed)

Each (method, clients) pair runs in a fresh subprocess, so peak memory is its own (TFF's
includes its worker_binary helper). Seconds per round are the median over the rounds after the
first (the first includes tracing and compilation, reported separately as warm-up).

    python benchmarks/bench_fedavg.py                 # 10, 100, 1000 clients; 20 rounds
    python benchmarks/bench_fedavg.py --clients 10 --rounds 5
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from course import PeakMemory  # noqa: E402
METHODS = ("keras_fit", "central", "fedutils", "tff")


def setting(num_clients: int):
    import fedutils
    from fedutils import data, models

    split = data.federated_digits(num_clients, "iid", batch_size=20, seed=0)
    fedutils.set_seed(0)
    initial = models.create_digits_model().get_weights()
    return (split.x_train, split.y_train), (split.x_test, split.y_test), split.clients, initial


def run_method(method: str, num_clients: int, rounds: int) -> dict:
    """Run one method in this process; return its timings and final accuracy."""
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
    elif method in ("central", "fedutils"):
        if method == "central":
            from fedutils.data import make_client_data

            xtr, ytr = train
            datasets = make_client_data(xtr, ytr, [np.arange(len(ytr))], batch_size=20)
        history = fedavg.run_fedavg(model, datasets, rounds=rounds, initial_weights=initial,
                                    progress=False)
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
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    total = time.perf_counter() - started
    _, accuracy = fedavg.evaluate_weights(model, weights, *test)
    monitor.done.set()
    steady = seconds[1:] if len(seconds) > 1 else seconds
    return {"method": method, "clients": num_clients, "rounds": rounds,
            "seconds_per_round": float(np.median(steady)), "first_round_seconds": seconds[0],
            "total_seconds": total, "accuracy": accuracy,
            "peak_memory_mb": round(monitor.peak / 2**20)}


def in_subprocess(method: str, clients: int, rounds: int, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        log = Path(tmp) / "log.txt"
        cmd = [sys.executable, __file__, "--worker", method, str(clients), str(rounds), str(out)]
        try:
            with open(log, "w") as stream:  # a file, not a pipe: TFF's helper would hold it
                subprocess.run(cmd, stdout=stream, stderr=subprocess.STDOUT, timeout=timeout,
                               check=True)
            return json.loads(out.read_text())
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            tail = log.read_text()[-800:] if log.exists() else ""
            return {"method": method, "clients": clients, "rounds": rounds,
                    "skipped": f"{type(exc).__name__}: {tail.strip().splitlines()[-1:] or ''}"}
        finally:
            from fedutils.bridges.tff_workers import stop_workers

            stop_workers(since=time.time() - timeout - 60)


def table(results: list[dict]) -> str:
    by = {(r["method"], r["clients"]): r for r in results}
    lines = ["| clients/round | method | s/round | × keras_fit | × central | TFF ÷ this | "
             "accuracy | first round s | peak MB |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for clients in sorted({r["clients"] for r in results}):
        for method in METHODS:
            r = by.get((method, clients))
            if r is None:
                continue
            if "skipped" in r:
                lines.append(f"| {clients} | {method} | skipped: {r['skipped']} |||||||")
                continue
            s = r["seconds_per_round"]

            def ratio(other, inverse=False):
                o = by.get((other, clients))
                if not o or "skipped" in o:
                    return "–"
                return f"{(o['seconds_per_round'] / s) if inverse else (s / o['seconds_per_round']):.2f}"

            lines.append(f"| {clients} | {method} | {s:.4f} | {ratio('keras_fit')} | "
                         f"{ratio('central')} | {ratio('tff', inverse=True)} | "
                         f"{r['accuracy']:.3f} | {r['first_round_seconds']:.2f} | "
                         f"{r['peak_memory_mb']} |")
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        method, clients, rounds, out = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
        Path(out).write_text(json.dumps(run_method(method, clients, rounds)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--tff-rounds-1000", type=int, default=3,
                        help="rounds for TFF at 1,000 clients (each takes many seconds)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--timeout", type=float, default=900, help="seconds per run")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fedavg.json")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from fedutils.tff_bridge import tff_available

    results = []
    for clients in args.clients:
        for method in args.methods:
            if method == "tff" and not tff_available():
                results.append({"method": method, "clients": clients, "rounds": 0,
                                "skipped": "TFF is not installed in this environment"})
                continue
            rounds = args.tff_rounds_1000 if (method == "tff" and clients >= 1000) else args.rounds
            result = in_subprocess(method, clients, rounds, args.timeout)
            results.append(result)
            print(json.dumps(result), flush=True)
    import platform

    import psutil

    report = {"machine": f"{platform.machine()}, {psutil.cpu_count()} cores, "
                         f"Python {platform.python_version()}",
              "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    text = table(results)
    args.out.with_suffix(".md").write_text(
        f"# FedAvg benchmark\n\n{report['machine']}, {report['when']}. "
        f"`make bench` (benchmarks/bench_fedavg.py).\n\n{text}\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
