"""The distribution builds as a wheel holding every mapped package, and the wheel imports."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"pip wheel failed:\n{proc.stdout}\n{proc.stderr}")
    (built,) = out.glob("sage_resilience-*.whl")
    return built


def test_wheel_contains_every_package_and_marker(wheel: Path) -> None:
    """The wheel maps core/, adaptive/, integrations/, benchmarks/ under sage_resilience."""
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "sage_resilience/__init__.py",
        "sage_resilience/py.typed",
        "sage_resilience/core/__init__.py",
        "sage_resilience/core/retry.py",
        "sage_resilience/core/breaker.py",
        "sage_resilience/adaptive/__init__.py",
        "sage_resilience/integrations/__init__.py",
        "sage_resilience/benchmarks/__init__.py",
        "sage_resilience/benchmarks/overhead.py",
    ):
        assert required in names
    assert not any(n.startswith(("tests/", "core/", "package/")) for n in names)


def test_wheel_imports_on_its_own(wheel: Path, tmp_path: Path) -> None:
    """Unpacked alone (no checkout on the path), the wheel's package imports and works."""
    zipfile.ZipFile(wheel).extractall(tmp_path)
    code = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r});"
        "import sage_resilience.core as c, sage_resilience.benchmarks.overhead;"
        f"assert c.__file__.startswith({str(tmp_path)!r}), c.__file__;"
        "print(c.retry(max_attempts=2, initial_delay=0.0)(lambda: 7)())"
    )
    # -I: no PYTHONPATH, no user site, and not the checkout's directory on the path.
    proc = subprocess.run(
        [sys.executable, "-I", "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "7"
