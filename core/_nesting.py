"""The context variable that marks a call as running inside a retrying call.

Set by a retry policy around the attempts it may repeat, read by retry policies nested inside
(the adaptive policy makes one attempt there, so that nested layers do not multiply attempts:
the seed's three layers made 27). Core's :class:`~.retry.Retry` sets it only from its second
attempt on, keeping the first attempt's happy path free of the ~150 ns a set/reset costs.
"""

from __future__ import annotations

import contextvars

__all__ = ["RETRYING"]

RETRYING: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "sage_resilience_retrying", default=False
)
