import re
from pathlib import Path

from fedutils.course import check

ROOT = Path(__file__).resolve().parent.parent


def pinned(*files):
    pins = {}
    for name in files:
        for line in (ROOT / name).read_text().splitlines():
            m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", line)
            if m:
                pins[m.group(1).lower()] = m.group(2)
    return pins


def test_expected_versions_match_the_requirement_files():
    pins = pinned("requirements.txt", "requirements-tff.txt")
    for req in check.COURSE:
        if req.name != "keras":  # keras comes with tensorflow, not pinned on its own
            assert pins.get(req.name) == req.expected, req.name


def test_check_passes_here_and_explains_the_overrides(capsys):
    assert check.main() == 0
    out = capsys.readouterr().out
    assert "All checks passed." in out
    lines = [ln for ln in out.splitlines() if ln.startswith("[")]
    assert all(ln.startswith(("[OK]", "[FAIL]")) for ln in lines)
    if check.profile() == "course":
        assert "jaxlib==0.4.14, which is no longer on PyPI" in out
        assert "typing-extensions==4.5.*" in out


def test_missing_or_wrong_package_fails(monkeypatch, capsys):
    real = check.installed_version
    monkeypatch.setattr(check, "installed_version",
                        lambda name: None if name in ("numpy", "tensorflow-federated")
                        else "0.0.1" if name == "tqdm" else real(name))
    monkeypatch.setattr(check, "profile", lambda: "course")
    assert check.main() == 1
    out = capsys.readouterr().out
    assert re.search(r"\[FAIL\] numpy .*not installed", out)
    assert re.search(r"\[FAIL\] tqdm +0\.0\.1 .*expected 4\.70\.1", out)
    assert "check(s) failed" in out


def test_summary_is_one_line_here_and_lists_only_failures(monkeypatch):
    line = check.summary()
    assert line.startswith("[OK] ") and "\n" not in line
    assert f"all {len(check.results()[1])} checks passed" in line
    if check.profile() == "course":
        assert "4 upstream pins overridden on purpose" in line  # jax, jaxlib, typing-ext., packaging
    real = check.installed_version
    monkeypatch.setattr(check, "installed_version",
                        lambda name: "0.0.1" if name == "tensorflow" else real(name))
    header, *failed = check.summary().splitlines()
    assert header.startswith("[FAIL] ") and f"1 of {len(check.results()[1])} checks failed" in header
    assert len(failed) == 1 and re.match(r"\[FAIL\] tensorflow +0\.0\.1 ", failed[0])


def test_main_prints_the_same_lines_as_results(capsys):
    check.main()
    out = capsys.readouterr().out.splitlines()
    lines = [line for _, line in check.results()[1]]
    assert [ln for ln in out if ln.startswith("[")] == lines
    assert out[1].strip().startswith("environment: ")


def test_modern_profile_treats_missing_tff_as_ok():
    ok, line = check.check_line(check.MODERN[2])
    if check.installed_version("tensorflow-federated") is None:
        assert ok and "fedutils equivalent" in line


def test_jupyterlab_starts_in_this_environment(tmp_path):
    """`make lab` must work: JupyterLab's app imports (it did not with packaging 22)."""
    import subprocess
    import sys

    import pytest

    pytest.importorskip("jupyterlab")
    log = tmp_path / "lab.log"
    with open(log, "w") as out:
        code = subprocess.run([sys.executable, "-c", "import jupyterlab.labapp"],
                              stdout=out, stderr=subprocess.STDOUT, timeout=120).returncode
    assert code == 0, log.read_text()
