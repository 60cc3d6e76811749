"""The fault rig: real servers to run the Sage wrappers against, with faults on demand.

* :class:`TemporaryDatabase`: a database of one's own on the real PostgreSQL, dropped after;
* :class:`EmbeddingStub`: a real HTTP server speaking the OpenAI-style ``/v1/embeddings`` API,
  with deterministic vectors, a requests-per-minute limit and scheduled faults;
* :class:`FaultProxy`: a TCP proxy in front of PostgreSQL that refuses, resets, blackholes,
  delays, or forwards a statement and drops its reply.

Used by the integration tests (``tests/integrations/sage``) and by ``sage-resilience demo``.
Needs the ``sage`` extra.
"""

from __future__ import annotations

from .postgres import DEFAULT_ADMIN_DSN, TemporaryDatabase, with_database, with_hostport
from .proxy import FaultProxy, ProxyMode, ProxyStats
from .stub import FAULT_KINDS, EmbeddingStub, FaultKind, ScheduledFault, StubStats

__all__ = [
    "DEFAULT_ADMIN_DSN",
    "FAULT_KINDS",
    "EmbeddingStub",
    "FaultKind",
    "FaultProxy",
    "ProxyMode",
    "ProxyStats",
    "ScheduledFault",
    "StubStats",
    "TemporaryDatabase",
    "with_database",
    "with_hostport",
]
