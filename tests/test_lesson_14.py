"""Lesson 14: the course map names every lesson (titles as the lessons have them, functions that
exist and that the lessons use), the aggregator the lesson writes agrees with fedutils' DP-FedAvg
and compression aggregators and keeps every contribution within the clip norm, the settings its
solution chose on validation pass the checker, the exercise checks can fail, and the cells after
the exercises wait for them instead of failing in a student copy. Cells are named by their
tags (tests/lesson_code.py)."""
import ast
import functools
import re
import sys
from pathlib import Path

import matplotlib
import nbformat
import numpy as np
import pytest

matplotlib.use("Agg")

import lesson_code  # noqa: E402
from fedutils import compression, privacy  # noqa: E402
from fedutils.course import capstone  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from course import title_of  # noqa: E402

LESSON = ROOT / "lessons" / "14_resources.ipynb"
cell = functools.partial(lesson_code.cell_source, LESSON)  # cell(tag): its source


def text_output(c) -> str:
    """Everything a committed cell printed or displayed as text or markdown."""
    parts = []
    for out in c.outputs:
        if out.output_type == "stream":
            parts.append(out.text)
        elif "data" in out:
            parts.append(out.data.get("text/markdown", out.data.get("text/plain", "")))
    return "".join(parts)


def definitions(source: str, literals: bool = True) -> str:
    """Only the imports, function/class definitions and (with `literals`) the assignments of
    values other than calls, of a cell: no training runs, no printing."""
    keep = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)
    return "\n".join(ast.get_source_segment(source, node) for node in ast.parse(source).body
                     if isinstance(node, keep) or (literals and isinstance(node, ast.Assign)
                                                   and not isinstance(node.value, ast.Call)))


@pytest.fixture(scope="module")
def ns():
    """The lesson's setup, definitions and rehearsal split, run as the notebook runs them."""
    namespace = {"__name__": "lesson14"}
    exec(cell(lesson_code.SETUP), namespace)
    exec(definitions(cell("course-map")), namespace)
    exec(definitions(cell("draw-course-map")), namespace)
    exec(cell("capstone-task"), namespace)
    exec(definitions(cell("run-capstone")), namespace)
    exec(cell("rehearsal"), namespace)
    exec(definitions(cell("exercise-1-solution"), literals=False), namespace)
    return namespace


def test_course_map_lists_every_lesson_with_its_own_title_and_a_real_function(ns):
    course = ns["COURSE"]
    numbers = [int(notebook[:2]) for notebook, *_ in course]
    assert numbers == list(range(1, 19))                    # Part I 01-14, Part II 15-18
    assert course[17][0] == "18_federated_fine_tuning_with_lora"
    by_stem = {notebook: (title, function) for notebook, title, _, function in course}
    for path in sorted(ROOT.glob("lessons/[0-9][0-9]_*.ipynb")):
        assert path.stem in by_stem, f"lesson 14's course map lacks {path.name}"
        title, function = by_stem[path.stem]
        lesson = nbformat.read(path, as_version=4)
        assert title_of(lesson) == f"{path.name[:2]} · {title}", (
            f"{path.name} is titled {title_of(lesson)!r}: update COURSE in lesson 14")
        assert ns["lesson_title"](path) == title
        code = "\n".join(c.source for c in lesson.cells if c.cell_type == "code")
        assert function.rsplit(".", 1)[1] in code, (
            f"lesson {path.name[:2]} does not use {function}, which lesson 14's course map "
            "says it introduces: update COURSE in lessons/14_resources.ipynb")
    for *_, function in course:
        assert callable(ns["fedutils_function"](function)), function
    assert ns["lesson_title"](ROOT / "lessons" / "99_not_a_lesson.ipynb") is None
    parts = [n for _, numbers in ns["PARTS"] for n in numbers]
    assert parts == numbers                                 # every lesson in exactly one part
    assert [n for name, part in ns["PARTS"] if name.startswith("I ·")
            for n in part] == list(range(1, 15))            # Part I: the fourteen slides
    fig, ax = ns["plt"].subplots()
    ns["draw_course_map"]({n: t for n, (_, t, *_) in zip(numbers, course)}, ax)
    assert len(ax.patches) == 2 * len(course) - 1           # a box per lesson, arrows between


def test_the_committed_map_links_every_lesson_by_its_file_name(ns):
    table = text_output(lesson_code.tagged_cell(LESSON, "course-map"))
    for notebook, title, idea, function in ns["COURSE"]:
        assert f"[{title}]({notebook}.ipynb)" in table
        assert f"`{function}`" in table


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


def test_the_rehearsal_holds_out_validation_digits_from_the_training_digits_only(ns):
    cap, x_fit, x_val = ns["cap"], ns["x_fit"], ns["x_val"]
    assert len(x_fit) + len(x_val) == len(cap.x_train)
    assert sum(len(c.y) for c in ns["rehearsal"]) == len(x_fit)
    assert len(ns["rehearsal"]) == capstone.NUM_CLIENTS
    train_rows = {row.tobytes() for row in cap.x_train}
    assert all(row.tobytes() in train_rows for row in x_val)


@pytest.fixture(scope="module")
def solved(ns):
    """The settings the committed solution chose on validation, run once on the official task
    (the sweep itself is nbval's to run)."""
    printed = text_output(lesson_code.tagged_cell(LESSON, "exercise-1-solution"))
    found = re.search(r"chosen on validation: z = ([0-9.]+), C = ([0-9.]+)", printed)
    assert found, "the solution prints the settings it chose"
    namespace = dict(ns)
    exec(cell("exercise-1-setup"), namespace)
    exec(definitions(cell("exercise-1-solution"), literals=False), namespace)
    config = dict(namespace["CONFIG"], noise_multiplier=float(found[1]),
                  clip_norm=float(found[2]))
    aggregator = namespace["PrivateCompressedAggregator"](
        config["clip_norm"], config["noise_multiplier"], config["clients_per_round"],
        config["topk_ratio"])
    namespace.update(CONFIG=config, aggregator=aggregator,
                     history=namespace["run_capstone"](aggregator, config))
    return namespace


def test_the_solution_s_settings_pass_the_checker_and_its_check(solved, capsys):
    report = capstone.check_capstone(solved["history"], solved["CONFIG"])
    assert report.passed
    exec(cell("exercise-1-check"), dict(solved))


def test_the_solution_s_noise_is_the_least_the_privacy_target_allows(solved):
    config = solved["CONFIG"]
    q = config["clients_per_round"] / capstone.NUM_CLIENTS
    eps = lambda z: privacy.compute_epsilon(z, q, config["rounds"], capstone.DELTA)  # noqa: E731
    assert eps(config["noise_multiplier"]) <= capstone.TARGETS["epsilon"]
    assert eps(round(config["noise_multiplier"] - 0.05, 2)) > capstone.TARGETS["epsilon"]
    too_noisy = dict(solved, CONFIG=dict(config, noise_multiplier=config["noise_multiplier"] + 0.1))
    with pytest.raises(AssertionError, match="larger than the privacy target needs"):
        exec(cell("exercise-1-check"), too_noisy)


class RememberedEpsilon:
    """fedutils.privacy, with compute_epsilon remembered: the solution and the checks compute
    the same epsilons again and again (each takes a tenth of a second)."""
    compute_epsilon = staticmethod(functools.lru_cache(maxsize=None)(privacy.compute_epsilon))

    def __getattr__(self, name):
        return getattr(privacy, name)


def test_the_cohort_check_accepts_the_solution_and_rejects_wrong_answers(solved, capsys):
    namespace = dict(solved, privacy=RememberedEpsilon())
    exec(cell("exercise-2-solution"), namespace)
    check = cell("exercise-2-check")
    exec(check, dict(namespace))
    cohorts, choice = namespace["cohorts"], namespace["m_choice"]
    assert cohorts[choice][2] <= 50 < max(mb for _, _, mb in cohorts.values())  # budget binds
    over_budget = max(cohorts, key=lambda m: cohorts[m][2])
    upload_only = {m: (z, noise, mb * 0.13) for m, (z, noise, mb) in cohorts.items()}
    noisier = {m: (round(z + 0.05, 2), (z + 0.05) * namespace["CONFIG"]["clip_norm"] / m, mb)
               for m, (z, noise, mb) in cohorts.items()}
    for wrong in ({"m_choice": over_budget}, {"m_choice": 10}, {"cohorts": upload_only},
                  {"cohorts": noisier}):
        with pytest.raises(AssertionError):
            exec(check, dict(namespace, **wrong))


@pytest.mark.parametrize("tag", ["capstone-against-plain", "cohorts-on-rehearsal"])
def test_cells_after_the_exercises_wait_for_them(ns, tag, capsys):
    """In a student copy the solutions' names do not exist: these cells say so and stop."""
    exec(cell(tag), dict(ns))
    assert "Complete exercise" in capsys.readouterr().out
