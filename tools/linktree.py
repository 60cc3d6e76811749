"""Build a link tree ``<dest>/sage_resilience`` mirroring pyproject's package-dir mapping.

Type checkers cannot follow setuptools' editable-install finder, and the top-level folders
(``core/``, ``adaptive/``, ...) are not named like the packages they become. Running
``python tools/linktree.py DEST`` makes ``DEST/sage_resilience`` out of symlinks, so that
``mypy DEST/sage_resilience`` checks the real files under their real names.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build(dest: Path) -> Path:
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ]
    for package, folder in sorted(mapping.items()):
        target = dest.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for source in (ROOT / folder).iterdir():
            if source.is_file() and source.suffix in {".py", ".typed", ".pyi"}:
                link = target / source.name
                if link.is_symlink() or link.exists():
                    link.unlink()
                link.symlink_to(source)
    return dest / "sage_resilience"


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
