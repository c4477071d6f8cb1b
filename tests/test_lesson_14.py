"""Lesson 14: the course map is built from the lessons themselves, the aggregator the lesson
writes agrees with fedutils' DP-FedAvg and compression aggregators and keeps every contribution
within the clip norm, its reference run passes the checker, and the exercise checks can fail."""
import ast
from pathlib import Path

import matplotlib
import nbformat
import numpy as np
import pytest

matplotlib.use("Agg")

from fedutils import compression, privacy  # noqa: E402
from fedutils.course import capstone  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LESSON = ROOT / "lessons" / "14_resources.ipynb"
CELLS = [c.source for c in nbformat.read(LESSON, as_version=4).cells if c.cell_type == "code"]


def cell(*needles: str) -> str:
    """The one code cell containing every needle."""
    found = [src for src in CELLS if all(n in src for n in needles)]
    assert len(found) == 1, f"expected one cell with {needles}, found {len(found)}"
    return found[0]


def definitions(source: str) -> str:
    """Only the imports, function/class definitions and literal assignments of a cell (no
    training runs, no printing)."""
    keep = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)
    return "\n".join(ast.get_source_segment(source, node) for node in ast.parse(source).body
                     if isinstance(node, keep)
                     or (isinstance(node, ast.Assign) and not isinstance(node.value, ast.Call)))


@pytest.fixture(scope="module")
def ns():
    """The lesson's setup and definitions, run as the notebook runs them (from lessons/)."""
    namespace = {"__name__": "lesson14"}
    exec(cell("import fedutils", "fedutils.set_seed(0)"), namespace)
    exec(definitions(cell("LESSON_NOTES = {")), namespace)
    exec(definitions(cell("def draw_course_map")), namespace)
    exec(cell("cap = capstone.load_capstone_data()"), namespace)
    exec(definitions(cell("def run_capstone")), namespace)
    exec(definitions(cell("# SOLUTION", "class PrivateCompressedAggregator")), namespace)
    return namespace


def test_course_map_lists_exactly_the_lessons_present_with_real_functions(ns):
    titles = ns["lesson_titles"](ROOT / "lessons")
    present = sorted(ROOT.glob("lessons/[0-9][0-9]_*.ipynb"))
    assert sorted(titles) == [int(p.name[:2]) for p in present]
    assert titles[14] == "Resources and capstone"
    assert set(titles) <= set(ns["LESSON_NOTES"])
    for number, path in zip(sorted(titles), present):
        function = ns["LESSON_NOTES"][number][1]
        assert callable(ns["fedutils_function"](function))
        code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells
                         if c.cell_type == "code")
        assert function.rsplit(".", 1)[1] in code, (
            f"lesson {number:02d} does not use {function}, which lesson 14's course map "
            "says it introduces: update LESSON_NOTES in lessons/14_resources.ipynb")
    parts = [n for _, numbers in ns["PARTS"] for n in numbers]
    assert parts == sorted(ns["LESSON_NOTES"])          # every lesson in exactly one part
    assert [n for name, numbers in ns["PARTS"] if name.startswith("I ·")
            for n in numbers] == list(range(1, 15))    # Part I: the fourteen slides
    fig, ax = ns["plt"].subplots()
    ns["draw_course_map"](titles, ax)
    assert len(ax.patches) >= 2 * len(titles) - 1  # a box per lesson, an arrow between them


def random_updates(n, seed, scale=0.05):
    rng = np.random.default_rng(seed)
    shapes = [(64, 64), (64,), (64, 10), (10,)]
    return [[rng.normal(0, scale, s).astype(np.float32) for s in shapes] for _ in range(n)]


def test_without_compression_the_lesson_aggregator_is_dp_fedavg(ns):
    ours = ns["PrivateCompressedAggregator"](0.5, 1.2, 4, ratio=1.0)
    reference = privacy.DPFedAvgAggregator(0.5, 1.2, expected_clients=4)
    updates = random_updates(3, seed=1, scale=0.1)
    got = ours(updates, np.ones(3), [0, 1, 2], np.random.default_rng(7))
    want = reference(updates, np.ones(3), [0, 1, 2], np.random.default_rng(7))
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(got, want))
    assert worst < 1e-6


def test_without_clipping_or_noise_it_is_the_compression_aggregator(ns):
    ours = ns["PrivateCompressedAggregator"](1e9, 0.0, 3, ratio=0.05)
    reference = compression.CompressionAggregator("top_k", ratio=0.05, error_feedback=True)
    ours_state, reference_state = ours.initialize(), reference.initialize()
    for r in range(3):  # several rounds: the residuals must evolve the same way
        updates = random_updates(3, seed=10 + r)
        got = ours.aggregate(updates, np.full(3, 12), [5, 6, 7], np.random.default_rng(r),
                             ours_state)
        want = reference.aggregate(updates, np.full(3, 12), [5, 6, 7],
                                   np.random.default_rng(r), reference_state)
        ours_state, reference_state = got.state, want.state
        for a, b in zip(got.delta, want.delta):
            np.testing.assert_allclose(a, b, atol=1e-7)
        assert got.measurements["upload_bytes"] == want.measurements["upload_bytes"]


def test_every_contribution_stays_within_the_clip_norm(ns):
    """One client sending the same direction each round, as in the lesson's demonstration:
    with noise off and m = 1 the aggregate is exactly what the client sent."""
    ours = ns["PrivateCompressedAggregator"](0.5, 0.0, 1, ratio=0.1)
    update = random_updates(1, seed=0)[0]
    state, norms = ours.initialize(), []
    for _ in range(10):
        out = ours.aggregate([update], np.ones(1), [0], np.random.default_rng(0), state)
        state = out.state
        norms.append(privacy.update_norm(out.delta))
    assert max(norms) <= 0.5 * (1 + 1e-6)
    assert max(norms) > 0.45  # error feedback has filled it up to the bound


def test_reference_solution_passes_the_checker(ns, capsys):
    namespace = dict(ns)
    exec(cell("# SOLUTION", "class PrivateCompressedAggregator"), namespace)
    report = capstone.check_capstone(namespace["history"], namespace["CONFIG"])
    assert report.passed
    exec(cell("# CHECK", "check_capstone(history, CONFIG)"), namespace)


def test_exercise_checks_accept_the_solutions_and_reject_wrong_answers(ns):
    namespace = dict(ns, CONFIG=dict(rounds=60, clients_per_round=20, noise_multiplier=1.2,
                                     clip_norm=0.5))
    for prompt in ("eps_double = ", "z_double = next("):
        exec(cell("# SOLUTION", prompt), namespace)
        check = cell("# CHECK", prompt.split(" ")[0].rstrip("="))
        exec(check, namespace)
    wrong = dict(namespace, eps_double=2 * namespace["eps_now"])
    with pytest.raises(AssertionError):
        exec(cell("# CHECK", "eps_double"), wrong)
    wrong = dict(namespace, z_double=namespace["z_double"] + 0.05)
    with pytest.raises(AssertionError):
        exec(cell("# CHECK", "z_double"), wrong)
