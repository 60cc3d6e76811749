"""Sage-shaped components behind sage-resilience (extra ``sage``: asyncpg, httpx).

The wrappers protect Sage's database, embedding client and memory manager with the adaptive
policy; :mod:`.rig` holds the real servers and fault injectors they are tested against.
"""

from __future__ import annotations

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

__all__ = [
    "EMBEDDING_OPTIONS",
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
]
