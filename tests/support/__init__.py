"""Shared test helpers (``tests`` is on the path: see pyproject's pytest ``pythonpath``)."""
