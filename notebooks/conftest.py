"""nbval settings for the notebooks.

The notebooks are committed without execution counts (they change on every run and say nothing). nbval reads a
missing count as "this cell was never run" and refuses saved outputs on such a cell; every saved output here
comes from a real run (`make notebooks`), so each code cell is marked as run and nbval compares all its outputs.
At the end, each notebook's time is printed against its 90-second budget.
"""


def pytest_collection_modifyitems(items):
    for item in items:
        cell = getattr(item, "cell", None)
        if cell is not None and cell.get("cell_type") == "code" and cell.get("execution_count") is None:
            cell["execution_count"] = 0


_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report):
    """Add up each notebook's cell times (setup, call and teardown of every cell)."""
    notebook = report.nodeid.split("::")[0]
    _seconds[notebook] = _seconds.get(notebook, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    """Print each notebook's time; the budget is 90 s on a 2-core CPU."""
    if _seconds:
        terminalreporter.section("notebook times (budget 90 s each)")
        for notebook, seconds in sorted(_seconds.items()):
            terminalreporter.write_line(f"{seconds:6.1f} s  {notebook}{'  OVER BUDGET' if seconds > 90 else ''}")
