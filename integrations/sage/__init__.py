"""Sage-shaped components behind sage-resilience (extra ``sage``: asyncpg, httpx).

The wrappers protect Sage's database, embedding client and memory manager with the adaptive
policy:

* :class:`ResilientDatabase`: an asyncpg pool with Sage's interface; SQLSTATE-classified errors,
  reads retried, writes retried only when idempotent or never sent
  (:class:`~sage_resilience.core.OutcomeUnknownError` otherwise);
* :class:`EmbeddingClient`: the OpenAI-style ``/v1/embeddings`` API over httpx; 429 and 5xx
  throttle and retry (hints honoured), 4xx raised once, never a made-up vector;
* :class:`MemoryService`: ``save`` / ``search`` with client-generated ids (a retried save cannot
  duplicate), priorities (search HIGH, save NORMAL, back-fill LOW) and a degraded search while
  embeddings are down.

:mod:`.rig` holds the real servers and fault injectors they are tested against.
"""

from __future__ import annotations

from .db import (
    DatabaseStats,
    IsolationLevel,
    PooledConnection,
    ResilientDatabase,
    classify_database_error,
    database_options,
)
from .embeddings import (
    EMBEDDING_OPTIONS,
    EmbeddingAuthError,
    EmbeddingClient,
    EmbeddingConnectionError,
    EmbeddingDimensionError,
    EmbeddingError,
    EmbeddingRequestError,
    EmbeddingResponseError,
    EmbeddingServiceError,
    EmbeddingThrottledError,
    EmbeddingTimeoutError,
)
from .memory import Memory, MemoryService, SearchResult

__all__ = [
    "EMBEDDING_OPTIONS",
    "DatabaseStats",
    "EmbeddingAuthError",
    "EmbeddingClient",
    "EmbeddingConnectionError",
    "EmbeddingDimensionError",
    "EmbeddingError",
    "EmbeddingRequestError",
    "EmbeddingResponseError",
    "EmbeddingServiceError",
    "EmbeddingThrottledError",
    "EmbeddingTimeoutError",
    "IsolationLevel",
    "Memory",
    "MemoryService",
    "PooledConnection",
    "ResilientDatabase",
    "SearchResult",
    "classify_database_error",
    "database_options",
]
