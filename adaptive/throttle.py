"""Client-side adaptive throttling (Google SRE book, "Handling Overload").

Each client keeps, over the last ~2 minutes, ``requests`` (every request the application
attempted, including those this throttle refused locally) and ``accepts`` (those the dependency
accepted: answered other than with an overload or throttling refusal, and not timed out). When
the dependency accepts fewer than ``1 / k`` of the requests, the client refuses new requests
itself with probability

    P(reject) = max(0, (requests - k * accepts) / (requests + 1))

:class:`AdaptiveThrottle` turns a :class:`ThrottleSample` into that probability (the setting
``"reject_probability"``, within ``[0, max]``); :func:`should_reject` decides one request
from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..core._validate import check_float, check_int
from ._bounded import BoundedController, check_bounds
from .controller import Bounds

__all__ = ["AdaptiveThrottle", "DEFAULT_THROTTLE_BOUNDS", "ThrottleSample", "should_reject"]

DEFAULT_THROTTLE_BOUNDS = Bounds(0.0, 0.8)
"""Envoy admission control's maximum rejection probability (80 %): some requests always reach
the dependency, so the client sees it recover."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ThrottleSample:
    """Counts over the window (~2 minutes) ending at ``now``.

    Attributes:
        now: the time of the update (the policy's clock, seconds).
        requests: requests the application attempted, locally refused ones included.
        accepts: requests the dependency accepted.
    """

    now: float
    requests: int
    accepts: int

    def __post_init__(self) -> None:
        check_float("now", self.now)
        check_int("requests", self.requests, minimum=0)
        check_int("accepts", self.accepts, minimum=0)


class AdaptiveThrottle(BoundedController):
    """The SRE book's client-side throttling probability.

    While the dependency accepts at least ``1 / k`` of the requests the probability is 0; past
    that, the client refuses the share of requests beyond ``k`` times what is being accepted,
    so the requests that do leave the client settle near ``k * accepts``: the dependency still
    sees ``k`` times what it can take (the margin that lets the client notice recovery
    quickly), but not the full retry-fuelled demand, and the refused requests cost the client
    nothing. Lower ``k`` is more aggressive (``k`` 1 refuses as soon as anything is refused);
    the SRE book's default is 2. Because refused requests still count in ``requests``, the
    probability keeps rising while the dependency accepts nothing, toward (but never reaching)
    1; the bounds' maximum (0.8, Envoy's) keeps a share of requests probing.
    """

    __slots__ = ("k",)

    def __init__(
        self,
        *,
        name: str = "throttle",
        bounds: Bounds = DEFAULT_THROTTLE_BOUNDS,
        initial: float = 0.0,
        k: float = 2.0,
    ) -> None:
        bounds = check_bounds(bounds)
        if bounds.minimum < 0.0 or bounds.maximum > 1.0:
            raise ValueError(
                f"bounds must lie within [0, 1] (a probability), got "
                f"[{bounds.minimum!r}, {bounds.maximum!r}]"
            )
        super().__init__(name=name, setting="reject_probability", bounds=bounds, initial=initial)
        self.k = check_float("k", k, minimum=1.0)

    def probability(self, requests: int, accepts: int) -> float:
        """The unclamped SRE probability for these counts."""
        return max(0.0, (requests - self.k * accepts) / (requests + 1))

    def update(self, snapshot: ThrottleSample) -> float | None:
        return self._propose(self.probability(snapshot.requests, snapshot.accepts))

    def inputs(self, snapshot: ThrottleSample) -> dict[str, float]:
        """The window's counts and ``k``."""
        return {
            "requests": float(snapshot.requests),
            "accepts": float(snapshot.accepts),
            "k": self.k,
        }


def should_reject(probability: float, *, random: Callable[[], float]) -> bool:
    """Whether to refuse one request, given the rejection ``probability`` (per call: O(1)).

    ``random`` returns a float in [0, 1) (``random.Random(seed).random`` in tests); it is not
    called when the probability is 0, the usual case.
    """
    return probability > 0.0 and random() < probability
