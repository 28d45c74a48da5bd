"""Macro indicators v(x, graph) and their registry.

An indicator is a JAX function ``v(x, graph) -> scalar`` of the activity vector ``x`` over the whole population.
Indicators use only ``graph.exposure`` (e = W x), ``graph.transpose`` (W^T y), ``graph.total`` (sum over real
agents) and ``graph.n`` so that they run on :class:`~kernels.graph.AttentionGraph` and on the padded device graph.

When ``v(x) = H(W x, x)`` (a *linear stem* W followed by a head H) the indicator also carries ``head`` and the
attribution kernel pulls the quadrature sum inside one ``W^T`` product (see :mod:`kernels.attribution`).

Built-in indicators (DESIGN §4), parameters with their defaults:

``reach``
    v = sum_j log(1 + e_j). No parameters. Closed-form attribution in :func:`reach_closed_form`.
``cascade`` (kappa=2.0, theta=3.0, rho=1.0)
    Two-hop threshold cascade: e1 = W x, a = sigmoid(kappa (log1p(e1) - theta)), e2 = W (rho a),
    v = sum_j sigmoid(kappa (log1p(e1_j + e2_j) - theta)) - v0, where v0 is the same sum at x = 0, so v(0) = 0.
    ``kappa`` is the steepness of the adoption threshold, ``theta`` the threshold in log1p-exposure units
    (exp(3) - 1 ~ 19 units of attended activity), ``rho`` the resharing propensity.
``saturation`` (capacity_per_agent=1.0, capacity=None)
    v = K (1 - exp(-S / K)) with S = sum_j log(1 + e_j): a global response that saturates at K. K is ``capacity``
    if given, else ``capacity_per_agent * n`` so the saturation point scales with the population.

User indicators: decorate a factory with :func:`register_indicator`, or publish it under the entry-point group
``skyattr.indicators`` (``name = "package.module:factory"``). A factory takes keyword parameters and returns an
:class:`Indicator` or a plain ``v(x, graph)`` callable.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

ENTRY_POINT_GROUP = "skyattr.indicators"

ValueFn = Callable[[jax.Array, Any], jax.Array]
HeadFn = Callable[[jax.Array, jax.Array, Any], jax.Array]


class IncrementalEvaluator(Protocol):
    """Sequential evaluator used by permutation-sampled Shapley in ``incremental`` mode.

    ``reset()`` starts from the empty coalition; ``add(i)`` lets agent i join with its full activity and returns
    the marginal change of v. Sum of the marginals over a full permutation equals v(x) - v(0).
    """

    def reset(self) -> None: ...

    def add(self, i: int) -> float: ...


IncrementalFactory = Callable[[np.ndarray, Any], IncrementalEvaluator]


@dataclass(frozen=True, eq=False)
class Indicator:
    """A macro indicator: ``value(x, graph)``, plus optional structure the kernels can exploit."""

    name: str
    value: ValueFn
    head: HeadFn | None = None
    incremental: IncrementalFactory | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, x: jax.Array, graph: Any) -> jax.Array:
        return self.value(x, graph)

    @property
    def linear_stem(self) -> bool:
        return self.head is not None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.params.items()))
        return f"Indicator({self.name}{', ' + args if args else ''})"


Factory = Callable[..., "Indicator | ValueFn"]
_FACTORIES: dict[str, Factory] = {}
_INSTANCES: dict[tuple[str, tuple[tuple[str, Any], ...]], Indicator] = {}
_LOCK = threading.Lock()


def register_indicator(name: str) -> Callable[[Factory], Factory]:
    """Decorator registering an indicator factory under ``name``.

    Example::

        @register_indicator("active_exposed")
        def active_exposed(threshold: float = 1.0):
            return lambda x, g: g.total(jax.nn.sigmoid(g.exposure(x) - threshold))
    """

    def deco(factory: Factory) -> Factory:
        with _LOCK:
            _FACTORIES[name] = factory
            for key in [k for k in _INSTANCES if k[0] == name]:
                del _INSTANCES[key]
        return factory

    return deco


def _load_entry_points() -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _FACTORIES:
            _FACTORIES[ep.name] = ep.load()


def available_indicators() -> list[str]:
    """Names of all registered indicators, entry points included."""
    _load_entry_points()
    return sorted(_FACTORIES)


def as_indicator(obj: Indicator | ValueFn | str, name: str | None = None) -> Indicator:
    """Coerce a registered name, an :class:`Indicator` or a plain ``v(x, graph)`` callable to an Indicator."""
    if isinstance(obj, Indicator):
        return obj
    if isinstance(obj, str):
        return get_indicator(obj)
    if callable(obj):
        return Indicator(name or getattr(obj, "__name__", "custom"), obj)
    raise TypeError(f"not an indicator: {obj!r}")


def get_indicator(name: str, **params: Any) -> Indicator:
    """The indicator registered as ``name`` with the given parameters (instances are cached, so repeated calls
    share compiled kernels). Unknown names raise ``ValueError`` listing the known ones."""
    key = (name, tuple(sorted(params.items())))
    try:
        hash(key)
    except TypeError:
        key = None  # unhashable parameters (arrays): no caching
    if key is not None and key in _INSTANCES:
        return _INSTANCES[key]
    if name not in _FACTORIES:
        _load_entry_points()
    if name not in _FACTORIES:
        raise ValueError(f"unknown indicator {name!r}; known: {', '.join(available_indicators())}")
    try:
        made = _FACTORIES[name](**params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for indicator {name!r}: {exc}") from exc
    ind = made if isinstance(made, Indicator) else Indicator(name, made, params=dict(params))
    if key is not None:
        with _LOCK:
            ind = _INSTANCES.setdefault(key, ind)
    return ind


def _stemmed(name: str, head: HeadFn, params: Mapping[str, Any], incremental: IncrementalFactory) -> Indicator:
    def value(x: jax.Array, graph: Any) -> jax.Array:
        return head(graph.exposure(x), x, graph)

    return Indicator(name, value, head=head, incremental=incremental, params=dict(params))


def _check_positive(name: str, **vals: float | None) -> None:
    for k, v in vals.items():
        if v is not None and not (np.isfinite(v) and v > 0):
            raise ValueError(f"indicator {name!r}: parameter {k} must be a positive finite number, got {v!r}")


@register_indicator("reach")
def reach() -> Indicator:
    def head(e: jax.Array, x: jax.Array, graph: Any) -> jax.Array:
        return graph.total(jnp.log1p(e))

    from kernels.incremental import ReachIncremental

    return _stemmed("reach", head, {}, ReachIncremental)


@register_indicator("cascade")
def cascade(kappa: float = 2.0, theta: float = 3.0, rho: float = 1.0) -> Indicator:
    _check_positive("cascade", kappa=kappa, rho=rho)
    if not np.isfinite(theta):
        raise ValueError(f"indicator 'cascade': parameter theta must be finite, got {theta!r}")

    def adopt(e: jax.Array) -> jax.Array:
        return jax.nn.sigmoid(kappa * (jnp.log1p(e) - theta))

    def head(e1: jax.Array, x: jax.Array, graph: Any) -> jax.Array:
        e2 = graph.exposure(rho * adopt(e1))
        raw = graph.total(adopt(e1 + e2))
        e2_0 = graph.exposure(jnp.full_like(e1, rho * adopt(jnp.zeros((), e1.dtype))))
        raw0 = graph.total(adopt(e2_0))
        return raw - raw0

    from kernels.incremental import CascadeIncremental

    params = {"kappa": kappa, "theta": theta, "rho": rho}
    return _stemmed("cascade", head, params, lambda x, g: CascadeIncremental(x, g, kappa, theta, rho))


@register_indicator("saturation")
def saturation(capacity_per_agent: float = 1.0, capacity: float | None = None) -> Indicator:
    _check_positive("saturation", capacity_per_agent=capacity_per_agent, capacity=capacity)

    def head(e: jax.Array, x: jax.Array, graph: Any) -> jax.Array:
        k = capacity if capacity is not None else capacity_per_agent * jnp.asarray(graph.n, e.dtype)
        return k * -jnp.expm1(-graph.total(jnp.log1p(e)) / k)

    from kernels.incremental import SaturationIncremental

    def incremental(x: np.ndarray, g: Any) -> IncrementalEvaluator:
        k = capacity if capacity is not None else capacity_per_agent * g.n
        return SaturationIncremental(x, g, k)

    params = {"capacity_per_agent": capacity_per_agent, "capacity": capacity}
    return _stemmed("saturation", head, params, incremental)


def reach_closed_form(x: np.ndarray, graph: Any) -> np.ndarray:
    """Exact Aumann–Shapley attribution of ``reach`` (float64, numpy):
    phi_i = sum_j W_ji x_i / e_j * log(1 + e_j). The test oracle at any N."""
    x = np.asarray(x, np.float64)
    att, src, w = graph.attender, graph.source, graph.weight
    e = np.bincount(att, weights=w * x[src], minlength=graph.n)
    ratio = np.ones_like(e)
    pos = e > 0
    ratio[pos] = np.log1p(e[pos]) / e[pos]
    return x * np.bincount(src, weights=w * ratio[att], minlength=graph.n)
