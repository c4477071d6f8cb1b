import pytest

from fedutils.course import interactive


def test_headless_runs_print_a_note_instead_of_widgets(monkeypatch, capsys):
    monkeypatch.setenv("FEDUTILS_RUN_ID", "test")
    calls = []
    assert interactive.interact(calls.append, x=1) is None
    assert capsys.readouterr().out.strip() == interactive.NOTE
    assert calls == []


def test_live_notebooks_get_ipywidgets_interact(monkeypatch):
    pytest.importorskip("ipywidgets")
    monkeypatch.delenv("FEDUTILS_RUN_ID", raising=False)
    calls = []

    def redraw(x):
        calls.append(x)

    interactive.interact(redraw, x=(1, 5))
    assert calls == [3], "interact calls the function once with the slider's middle value"


def test_bad_function():
    with pytest.raises(TypeError, match="function must be callable"):
        interactive.interact("plot")
