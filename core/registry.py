"""Registries of named policies, and :data:`breaker_manager`, the default one.

A registry is an ordinary object: create your own for a component, or use the default that the
seed's decorators fill. ``circuit_breaker(name, ...)`` really registers every breaker it makes
(the seed's decorator kept a private dictionary per decoration, so its manager stayed empty and a
manual reset did nothing).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import Any, ClassVar, Protocol, runtime_checkable

from .breaker import CircuitBreaker, CircuitBreakerConfig
from .clock import Clock
from .events import Listener
from .retry import Retry, RetryConfig

__all__ = ["NamedPolicy", "Registry", "breaker_manager"]


@runtime_checkable
class NamedPolicy(Protocol):
    """What a registry holds: anything with a name, stats and listeners."""

    name: str

    def stats(self) -> Any: ...

    def add_listener(self, listener: Listener) -> None: ...


def _make_breaker(name: str, config: Any, clock: Clock | None) -> NamedPolicy:
    return CircuitBreaker(name, config, clock=clock)


def _make_retry(name: str, config: Any, clock: Clock | None) -> NamedPolicy:
    return Retry(config if clock is None else replace(config, clock=clock), name=name)


def _is_exception_class(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, BaseException)


def _settings(config: Any) -> object:
    """What must match for a second ``get_or_create`` of a name: the config's compared fields,
    with exception classes as sets (``(A, B)`` and ``(B, A)`` name the same classes)."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        return config
    settings: list[tuple[str, object]] = []
    for f in dataclasses.fields(config):
        if not f.compare:
            continue
        value = getattr(config, f.name)
        if _is_exception_class(value):
            value = frozenset((value,))
        elif isinstance(value, tuple) and value and all(_is_exception_class(v) for v in value):
            value = frozenset(value)
        settings.append((f.name, value))
    return tuple(settings)


class Registry:
    """Named policies, created on demand and shared by name.

    Thread-safe. Listeners added to the registry are attached to every policy it holds now or
    later (this is how the Prometheus and OpenTelemetry listeners see everything).
    """

    _factories: ClassVar[dict[type, Callable[[str, Any, Clock | None], NamedPolicy]]] = {
        CircuitBreakerConfig: _make_breaker,
        RetryConfig: _make_retry,
    }

    def __init__(self, name: str = "registry") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._policies: dict[str, NamedPolicy] = {}
        self._listeners: tuple[Listener, ...] = ()

    @classmethod
    def register_factory(
        cls, config_type: type, factory: Callable[[str, Any, Clock | None], NamedPolicy]
    ) -> None:
        """Teach :meth:`get_or_create` to build policies from configs of ``config_type``."""
        cls._factories[config_type] = factory

    def register(self, policy: NamedPolicy) -> NamedPolicy:
        """Add ``policy`` under its name. Registering the same object twice is a no-op; another
        object under a taken name is a ``ValueError``."""
        name = getattr(policy, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"policy must have a non-empty str name, got {policy!r}")
        with self._lock:
            existing = self._policies.get(name)
            if existing is policy:
                return policy
            if existing is not None:
                raise ValueError(f"a policy named {name!r} is already registered")
            self._policies[name] = policy
            listeners = self._listeners
        for listener in listeners:
            policy.add_listener(listener)
        return policy

    def unregister(self, name: str) -> NamedPolicy | None:
        """Remove and return the policy ``name`` (``None`` if absent)."""
        with self._lock:
            return self._policies.pop(name, None)

    def get(self, name: str) -> Any:
        """The policy registered as ``name``, or ``None``."""
        return self._policies.get(name)

    def get_or_create(
        self,
        name: str,
        config: Any = None,
        *,
        clock: Clock | None = None,
    ) -> Any:
        """The policy ``name``, built from ``config`` if absent (default: a breaker with the
        default config).

        If it exists, ``config`` must match its settings (numeric fields and exception classes,
        in any order; callbacks and the clock are not compared, the first ones stay), else
        ``ValueError``. Without a config the existing policy is returned as it is.
        """
        if config is None:
            existing = self._policies.get(name)
            if existing is not None:
                return existing
            config = CircuitBreakerConfig()
        factory = self._factories.get(type(config))
        if factory is None:
            raise TypeError(f"no policy is built from a {type(config).__name__}")
        created: NamedPolicy | None = None
        with self._lock:
            existing = self._policies.get(name)
            if existing is not None:
                existing_config = getattr(existing, "config", None)
                if type(existing_config) is not type(config):
                    raise ValueError(
                        f"{name!r} is already registered as a {type(existing).__name__}"
                    )
                if _settings(existing_config) != _settings(config):
                    raise ValueError(
                        f"{name!r} is already registered with different settings: "
                        f"{existing_config!r} != {config!r}"
                    )
                return existing
            created = factory(name, config, clock)
            self._policies[name] = created
            listeners = self._listeners
        for listener in listeners:
            created.add_listener(listener)
        return created

    def get_breaker(self, name: str, config: CircuitBreakerConfig | None = None) -> CircuitBreaker:
        """The seed's spelling of :meth:`get_or_create` for breakers (without a config, an
        existing breaker is returned whatever its settings)."""
        breaker = self.get_or_create(name, config)
        if not isinstance(breaker, CircuitBreaker):
            raise ValueError(f"{name!r} is not a circuit breaker")
        return breaker

    def breakers(self) -> list[CircuitBreaker]:
        with self._lock:
            return [p for p in self._policies.values() if isinstance(p, CircuitBreaker)]

    def get_all_stats(self) -> list[dict[str, Any]]:
        """Every breaker's :meth:`~CircuitBreaker.stats` as a plain dict (the seed's shape)."""
        return [b.stats().as_dict() for b in self.breakers()]

    def status(self) -> dict[str, Any]:
        """A snapshot of every named policy (kind, state, settings, counts), ready for JSON: the
        body of a health endpoint. ``healthy`` is false while any breaker is open."""
        with self._lock:
            policies = list(self._policies.values())
        entries: dict[str, Any] = {}
        healthy = True
        for policy in policies:
            stats = policy.stats()
            fields: Mapping[str, Any] = {}
            if dataclasses.is_dataclass(stats) and not isinstance(stats, type):
                fields = dataclasses.asdict(stats)
            elif isinstance(stats, Mapping):
                fields = stats
            # The name is the entry's key; "kind" is the policy's family, never a stats field.
            entry: dict[str, Any] = {"kind": _kind_of(policy)}
            entry.update((k, v) for k, v in fields.items() if k not in ("name", "kind"))
            if entry.get("state") == "open":
                healthy = False
            entries[policy.name] = entry
        return {"registry": self.name, "healthy": healthy, "policies": entries}

    def reset(self, name: str) -> None:
        """Reset the breaker (or the retry's counters) registered as ``name``; ``KeyError`` if
        there is none."""
        policy = self._policies.get(name)
        if policy is None:
            raise KeyError(name)
        _reset(policy)

    def reset_all(self) -> None:
        """Reset every policy."""
        with self._lock:
            policies = list(self._policies.values())
        for policy in policies:
            _reset(policy)

    def clear(self) -> None:
        """Forget every policy (tests use this; decorated functions keep their breakers)."""
        with self._lock:
            self._policies.clear()

    def add_listener(self, listener: Listener) -> None:
        """Attach ``listener`` to every policy, present and future."""
        with self._lock:
            if listener in self._listeners:
                return
            self._listeners = (*self._listeners, listener)
            policies = list(self._policies.values())
        for policy in policies:
            policy.add_listener(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._lock:
            # Equality, not identity: ``obj.method`` is a new bound method at each access.
            self._listeners = tuple(x for x in self._listeners if x != listener)
            policies = list(self._policies.values())
        for policy in policies:
            remove = getattr(policy, "remove_listener", None)
            if remove is not None:
                remove(listener)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._policies)

    def __contains__(self, name: object) -> bool:
        return name in self._policies

    def __len__(self) -> int:
        return len(self._policies)

    def __iter__(self) -> Iterator[NamedPolicy]:
        with self._lock:
            return iter(list(self._policies.values()))

    def __repr__(self) -> str:
        return f"Registry(name={self.name!r}, policies={self.names()!r})"


def _reset(policy: NamedPolicy) -> None:
    if isinstance(policy, CircuitBreaker):
        policy.reset()
    elif isinstance(policy, Retry):
        policy.reset_stats()
    else:
        reset = getattr(policy, "reset", None)
        if reset is not None:
            reset()


_KINDS: dict[str, str] = {
    "CircuitBreaker": "circuit_breaker",
    "Retry": "retry",
    "RateLimiter": "rate_limiter",
    "Bulkhead": "bulkhead",
    "Timeout": "timeout",
    "Fallback": "fallback",
    "Hedge": "hedge",
}


def _kind_of(policy: object) -> str:
    """``kind`` names the policy's family: its own ``kind_name`` attribute, or from its class
    (a policy's ``kind`` attribute means something else: a timeout's is "attempt" or "total")."""
    kind = getattr(policy, "kind_name", None)
    if isinstance(kind, str):
        return kind
    for cls in type(policy).__mro__:
        if cls.__name__ in _KINDS:
            return _KINDS[cls.__name__]
    return type(policy).__name__.lower()


breaker_manager = Registry("breaker_manager")
"""The default registry: every ``circuit_breaker(name, ...)`` without ``registry=`` lands here."""
