"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

from sage_resilience.core import FakeClock, breaker_manager, use_clock

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_a_short_quick_start() -> None:
    """The quick start exists and stays under 15 lines."""
    blocks = _python_blocks()
    assert blocks
    assert len(blocks[0].strip().splitlines()) < 15


def test_readme_examples_execute() -> None:
    """Every Python block of the README executes and registers what it says."""
    for block in _python_blocks():
        namespace: dict[str, object] = {}
        with use_clock(FakeClock()):
            exec(compile(block, str(README), "exec"), namespace)
    assert {"external_api", "database"} <= set(breaker_manager.names())
