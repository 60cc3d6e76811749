"""The analysis notebooks run from top to bottom against the installed package.

Each notebook is executed with nbclient on a copy (the committed outputs are left alone), then
checked for what it must show: its tables cover every scenario, its figures were drawn. They
take a few minutes in all (the simulator runs at full scale); deselect them with
``-m "not notebooks"``.

To refresh the committed outputs after a change to the package::

    python tests/notebooks/test_notebooks.py            # every notebook
    python tests/notebooks/test_notebooks.py sensitivity.ipynb
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
SCENARIOS = (
    "blips",
    "outage",
    "blackhole",
    "brownout",
    "latency-spike",
    "throttled",
    "metastable",
    "noisy",
    "flapping",
    "priority-overload",
)
CELL_TIMEOUT = 600  # seconds; a whole notebook takes at most about two minutes

pytestmark = pytest.mark.notebooks


def execute(path: Path, workdir: Path) -> Any:
    """``path`` executed in a fresh kernel with ``workdir`` as its working directory."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()
    return notebook


def text_of(notebook: Any) -> str:
    """Everything the code cells printed, a blank line after each cell's."""
    return "\n".join(
        "".join(
            output.get("text", "")
            for output in cell.get("outputs", [])
            if output.get("output_type") == "stream"
        )
        for cell in notebook.cells
    )


def images_of(notebook: Any) -> int:
    return sum(
        1
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    )


def errors_of(notebook: Any) -> list[str]:
    return [
        f"{output.get('ename')}: {output.get('evalue')}"
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]


def table_lines(text: str, header: str) -> list[str]:
    """The rows of the table printed under the line starting with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:  # the header, then a rule of dashes
        if not line.strip():
            break
        rows.append(line)
    return rows


def table_rows(text: str, header: str) -> dict[str, list[str]]:
    """The same rows, by their first word."""
    return {line.split()[0]: line.split()[1:] for line in table_lines(text, header)}


def run(tmp_path: Path, name: str) -> tuple[Any, str]:
    notebook = execute(NOTEBOOKS / name, tmp_path)
    assert not errors_of(notebook)
    text = text_of(notebook)
    assert "Traceback" not in text
    assert "notebook executed in" in text
    return notebook, text


def test_controller_trajectories(tmp_path: Path) -> None:
    """One figure per scenario, and the closing table has every scenario with its figures."""
    notebook, text = run(tmp_path, "controller-trajectories.ipynb")
    assert images_of(notebook) >= len(SCENARIOS)
    rows = table_rows(text, "scenario ")
    assert set(rows) == set(SCENARIOS)
    for scenario, cells in rows.items():
        goodput = float(cells[0])
        assert 0.0 < goodput <= 1.0 + 1e-9, (scenario, goodput)
    # The noisy dependency is healthy: the adaptive breaker never trips on it.
    assert rows["noisy"][-1] == "0"


def test_sensitivity(tmp_path: Path) -> None:
    """Every sweep drew its figure and table; the limits compare on every scenario."""
    notebook, text = run(tmp_path, "sensitivity.ipynb")
    glance = table_lines(text, "parameter ")
    assert len(glance) >= 8
    assert images_of(notebook) >= len(glance) + 1  # a figure per sweep, and the limits'
    for line in glance:
        # ... spread, default, its mean score, best value, its mean score
        spread, _default, score, _best, best_score = line.split()[-5:]
        assert 0.0 <= float(spread) <= 1.0
        assert 0.0 < float(score) <= float(best_score) <= 1.0 + 1e-9, line
    limits = table_rows(text, "scenario ")
    assert tuple(k for k in limits if k in SCENARIOS) == SCENARIOS
    for scenario in SCENARIOS:
        scores = [float(limits[scenario][i]) for i in (0, 3, 6)]  # one per limit algorithm
        assert all(0.0 <= s <= 1.0 + 1e-9 for s in scores), (scenario, scores)


def test_static_vs_adaptive(tmp_path: Path) -> None:
    """The full-scale grid ran (27 configurations, 10 scenarios) and names a best per scenario."""
    notebook, text = run(tmp_path, "static-vs-adaptive.ipynb")
    assert "290 full-scale runs" in text
    assert images_of(notebook) >= 1
    rows = table_rows(text, "scenario ")
    assert set(rows) == set(SCENARIOS)
    for scenario, cells in rows.items():
        assert cells[0].startswith("static["), (scenario, cells)
        best, adaptive = float(cells[1]), float(cells[7])
        assert 0.0 < best <= 1.0 + 1e-9
        assert 0.0 < adaptive <= 1.0 + 1e-9
    assert re.search(r"adaptive scores at least the best static's on \d+ of 10", text)


def main(argv: list[str]) -> int:
    """Re-execute notebooks in place (their committed outputs refreshed)."""
    import nbclient
    import nbformat

    names = argv or sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    for name in names:
        path = NOTEBOOKS / name
        started = time.perf_counter()
        notebook = nbformat.read(path, as_version=4)
        nbclient.NotebookClient(
            notebook,
            timeout=CELL_TIMEOUT,
            kernel_name="python3",
            resources={"metadata": {"path": str(NOTEBOOKS)}},
        ).execute()
        nbformat.write(notebook, path)
        print(f"{name}: executed in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
