"""Whether the interpreter has a GIL, which the lock-free hot paths rely on.

Under the GIL, CPython only switches threads at a few instructions (function entry, backward
jumps, after calls), never inside ``obj.count += 1`` on a slotted int attribute; so the hot paths
count with plain increments and no lock. On a free-threaded build they take the lock path.
"""

from __future__ import annotations

import sys

GIL_ENABLED: bool = bool(getattr(sys, "_is_gil_enabled", lambda: True)())
