"""benchmarks/bench_fedavg.py: the table, the goals and the plot from a small made-up results
list (no training), and one tiny real run of Flower's simulation engine (3 clients, 2 rounds)
that must end with exactly fedutils' accuracy: same split, same initial weights, and the app's
NumPy client training equals fedutils' client_update to ~1e-6. The real run needs
.venv-modern with Ray (requirements-modern.txt) and is skipped without it.
"""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("bench_fedavg",
                                              ROOT / "benchmarks" / "bench_fedavg.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
FLOWER_MISSING = bench.flower_missing()


def row(method, clients, seconds, accuracy=0.9, rounds=20, memory=600):
    return {"method": method, "clients": clients, "rounds": rounds,
            "seconds_per_round": seconds, "first_round_seconds": 10 * seconds,
            "total_seconds": 30 * seconds, "accuracy": accuracy, "peak_memory_mb": memory}


@pytest.fixture
def results():
    """fedutils at 0.5×, 0.8× and 1.5× central; at 100 clients TFF 40× and Flower 10× slower
    than fedutils, Flower 2 points less accurate; Flower skipped at 1,000 clients."""
    return [row("central", 10, 0.002), row("fedutils", 10, 0.001),
            row("central", 100, 0.010), row("fedutils", 100, 0.008, accuracy=0.611),
            row("tff", 100, 0.32, accuracy=0.611), row("flower", 100, 0.08, accuracy=0.591),
            row("central", 1000, 0.010), row("fedutils", 1000, 0.015),
            {"method": "flower", "clients": 1000, "rounds": 0, "skipped": "no Ray"}]


def test_goals_are_the_measured_ratios(results):
    g = bench.goals(results)
    assert g["fedutils_over_central"] == pytest.approx({"10": 0.5, "100": 0.8, "1000": 1.5})
    assert g["fedutils_at_most_central"] is False          # 1.5× at 1,000 clients
    assert g["tff_over_fedutils_at_100"] == pytest.approx(40.0)
    assert g["flower_over_fedutils_at_100"] == pytest.approx(10.0)
    assert g["fedutils_20x_faster_than_tff_at_100"] is True
    assert g["fedutils_20x_faster_than_flower_at_100"] is False
    assert g["same_accuracy_as_tff_at_100"] is True
    assert g["same_accuracy_as_flower_at_100"] is False    # 2 points apart
    assert g["accuracy_at_100"] == {"central": 0.9, "fedutils": 0.611, "tff": 0.611,
                                    "flower": 0.591}
    json.dumps(g)                                          # it goes into the JSON


def test_goals_missing_rows_are_none_not_false(results):
    g = bench.goals([r for r in results if r["method"] in ("central", "fedutils")
                     and r["clients"] != 1000])
    assert g["fedutils_at_most_central"] is None
    assert g["fedutils_20x_faster_than_flower_at_100"] is None
    assert g["same_accuracy_as_tff_at_100"] is None
    assert "not measured" in bench.goal_lines(g)


def test_table_has_a_row_per_result_and_the_flower_ratio(results):
    lines = bench.table(results).splitlines()
    assert "Flower ÷ this" in lines[0] and "TFF ÷ this" in lines[0]
    assert len(lines) == 2 + len(results)
    fedutils_100 = next(line for line in lines if line.startswith("| 100 | fedutils |"))
    cells = [c.strip() for c in fedutils_100.split("|")[1:-1]]
    assert cells[6:8] == ["40.00", "10.00"]                # TFF ÷ this, Flower ÷ this
    assert any("skipped: no Ray" in line for line in lines)


def test_plot_and_markdown_from_the_json(results, tmp_path):
    report = {"machine": "test machine", "when": "now", "results": results,
              "goals": bench.goals(results)}
    (tmp_path / "fedavg.json").write_text(json.dumps(report))
    bench.plot(json.loads((tmp_path / "fedavg.json").read_text()), tmp_path / "fedavg.png")
    assert (tmp_path / "fedavg.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = bench.markdown(report, "fedavg.png")
    assert "![" in text and "(fedavg.png)" in text
    assert "40.0× — met" in text and "10.0× — NOT met" in text


@pytest.mark.skipif(FLOWER_MISSING is not None,
                    reason=f"Flower's simulation needs .venv-modern with Ray: {FLOWER_MISSING}")
@pytest.mark.skipif(sys.prefix == str(bench.MODERN_PYTHON.parent.parent),
                    reason="run once, from the environment `make bench` runs in (the TFF one)")
def test_flower_simulation_reaches_fedutils_accuracy_exactly():
    flower = bench.in_subprocess("flower", 3, 2, timeout=120)
    assert "skipped" not in flower, flower["skipped"]
    assert "left_running" not in flower                    # Ray was shut down
    assert flower["rounds"] == 2 and flower["peak_memory_mb"] > 0
    fedutils = bench.run_method("fedutils", 3, 2)
    assert abs(flower["accuracy"] - fedutils["accuracy"]) <= 1e-6
