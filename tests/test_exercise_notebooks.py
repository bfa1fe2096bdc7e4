"""Tests for the "Your turn" sections of the notebooks (minimaskrcnn.exercises in use) and their closing questions.

The exercise cells of each notebook are found by their tags: "exercise-import" (the imports of the section),
"exercise-stub" (the learner's starting point, exactly `stub(name)`) and "exercise-check" (`check("name", name)`).
They run in-process, in a fresh namespace, without the rest of the notebook: once with the reference solutions in
place of the stubs (every check passes) and once as committed (every check says "not attempted yet").
"""
import ast
import contextlib
import io
from pathlib import Path

import nbformat
import pytest

from minimaskrcnn.exercises import EXERCISES, stub

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(path.stem for path in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
WITH_EXERCISES = sorted({ex.notebook for ex in EXERCISES.values()})


def read(notebook: str):
    return nbformat.read(NOTEBOOK_DIR / f"{notebook}.ipynb", as_version=4)


def tagged(notebook: str, tag: str) -> list:
    return [cell for cell in read(notebook).cells if tag in cell.metadata.get("tags", [])]


def checked_name(cell) -> str:
    """The exercise a check cell checks; the cell must be the single expression check("name", name)."""
    call = ast.parse(cell.source, mode="eval").body
    assert isinstance(call, ast.Call) and call.func.id == "check", cell.source
    assert [type(a) for a in call.args] == [ast.Constant, ast.Name], cell.source
    assert call.args[1].id == call.args[0].value, cell.source
    return call.args[0].value


def run_section(notebook: str, solved: bool) -> list:
    """Run the notebook's exercise cells in order in a fresh namespace, stubs replaced by the reference solutions
    when `solved`; -> [(name, what check returned, what it printed)]."""
    namespace, results = {}, []
    for cell in read(notebook).cells:
        tags = cell.metadata.get("tags", [])
        if "exercise-import" in tags:
            exec(cell.source, namespace)
        elif "exercise-stub" in tags:
            name = ast.parse(cell.source).body[0].name
            exec(f"from minimaskrcnn.exercises.solutions import {name}" if solved else cell.source, namespace)
        elif "exercise-check" in tags:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                ok = eval(cell.source, namespace)
            results.append((checked_name(cell), ok, out.getvalue()))
    return results


@pytest.mark.parametrize("notebook", WITH_EXERCISES)
def test_every_exercise_is_in_its_notebook(notebook):
    names = [name for name, ex in EXERCISES.items() if ex.notebook == notebook]
    stubs = {ast.parse(cell.source).body[0].name: cell.source for cell in tagged(notebook, "exercise-stub")}
    checks = [checked_name(cell) for cell in tagged(notebook, "exercise-check")]
    tasks = "\n".join(cell.source for cell in tagged(notebook, "exercise-task"))
    assert len(tagged(notebook, "exercise-import")) == 1
    code = [cell for cell in read(notebook).cells if cell.cell_type == "code"]
    first = next(i for i, cell in enumerate(code) if "exercise-import" in cell.metadata.get("tags", []))
    section = {"exercise-import", "exercise-stub", "exercise-check"}
    assert all(section & set(cell.metadata.get("tags", [])) for cell in code[first:]), f"{notebook}: code after"
    assert sorted(stubs) == sorted(checks) == sorted(names)
    for name in names:
        assert stubs[name] == stub(name).rstrip("\n"), f"{notebook}: the stub of {name} is not stub({name!r})"
        assert f"`from minimaskrcnn.exercises.solutions import {name}`" in tasks, f"{notebook}: {name}'s solution"


def test_exercises_only_in_their_notebooks():
    for notebook in NOTEBOOKS:
        names = {checked_name(cell) for cell in tagged(notebook, "exercise-check")}
        assert all(EXERCISES[name].notebook == notebook for name in names), notebook


@pytest.mark.parametrize("notebook", WITH_EXERCISES)
def test_solutions_pass_every_check(notebook):
    results = run_section(notebook, solved=True)
    assert results
    for name, ok, out in results:
        assert ok is True, out


@pytest.mark.parametrize("notebook", WITH_EXERCISES)
def test_untouched_stubs_are_not_attempted(notebook):
    results = run_section(notebook, solved=False)
    committed = {checked_name(cell): "".join(o.get("text", "") for o in cell.outputs)
                 for cell in tagged(notebook, "exercise-check")}
    assert results
    for name, ok, out in results:
        assert ok is False and out.startswith(f"{name}: not attempted yet. Hint: "), out
        assert committed[name] == out, f"{notebook}: the committed output of check({name!r}) is not the stub's"


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_notebook_ends_with_questions_and_folded_answers(notebook):
    last = read(notebook).cells[-1]
    assert last.cell_type == "markdown" and last.source.startswith("## Questions")
    questions = last.source.count("<details><summary>Answer</summary>")
    assert 2 <= questions <= 3 and last.source.count("</details>") == questions
