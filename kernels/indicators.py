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
    if given, else ``capacity_per_agent * n`` so the saturation point scales with the population; a panel study
    of it keeps the full population's K (:meth:`Indicator.at_scale`), or it would study another function.
``exposure`` (linear)
    v = sum_j e_j = sum_j (W x)_j: the total attended activity. Exact attribution phi_i = x_i (W^T 1)_i
    (:func:`linear_closed_form`).
``activity`` (linear)
    v = sum_i x_i: the total activity, attention aside. Exact attribution phi_i = x_i.

The linear ones are the reference of the scale-bias figures: with a linear v every coalition's attribution is the
restriction of the full one, so a panel study in the same game (:func:`kernels.panel.panel_attribution`) differs
from the full-scale attribution on the panel by nothing (r* = 0); see :mod:`kernels.bias`.

User indicators: decorate a factory with :func:`register_indicator`, or publish it under the entry-point group
``skyattr.indicators`` (``name = "package.module:factory"``). A factory takes keyword parameters and returns an
:class:`Indicator` or a plain ``v(x, graph)`` callable.
"""

from __future__ import annotations

import inspect
import math
import numbers
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import jax

# The registry (names, parameters, their checks) works without JAX, so configuration is validated, and a daemon's
# health endpoint is up, before JAX has loaded: the indicators' bodies import JAX where they run.

ENTRY_POINT_GROUP = "skyattr.indicators"

ValueFn = Callable[["jax.Array", Any], "jax.Array"]
HeadFn = Callable[["jax.Array", "jax.Array", Any], "jax.Array"]
# (e, x, graph) -> (dH/de, dH/dx): the head's gradient written out, where jax.grad would make more passes
HeadGradFn = Callable[["jax.Array", "jax.Array", Any], "tuple[jax.Array, jax.Array]"]


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
    head_grad: HeadGradFn | None = None
    linear: bool = False  # v(x) = c . x for a c that depends on the graph only: attribution phi_i = c_i x_i
    scaled: Callable[[int], Indicator] | None = None  # see at_scale
    about: str = ""  # what it measures, in a line (``skyattr indicators`` shows it)

    def at_scale(self, n: int) -> Indicator:
        """This indicator with every parameter that grows with the population fixed at its value for ``n``
        agents (``saturation``'s K = capacity_per_agent * n): what a panel study of the n-agent population must
        run on its few agents to study the same function. Itself when nothing depends on n."""
        return self.scaled(n) if self.scaled is not None else self

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
_Key = tuple[str, tuple[tuple[str, str, Any], ...]]  # name, then (parameter, its type's name, value), sorted
_INSTANCES: dict[_Key, Indicator] = {}
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
        return Indicator(name or str(getattr(obj, "__name__", "custom")), obj)
    raise TypeError(f"not an indicator: {obj!r}")


def get_indicator(name: str, **params: Any) -> Indicator:
    """The indicator registered as ``name`` with the given parameters (instances are cached, so repeated calls
    share compiled kernels). Unknown names, unknown parameters and bad parameter values raise ``ValueError``
    naming the indicator and the parameter."""
    # the type is part of the key: True == 1 and hash(True) == hash(1), but only one of them is a valid kappa
    key: _Key | None = (name, tuple(sorted((k, type(v).__name__, v) for k, v in params.items())))
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
    factory = _FACTORIES[name]
    _check_names(name, factory, params)
    try:
        made = factory(**params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for indicator {name!r}: {exc}") from exc
    about = (inspect.getdoc(factory) or "").split("\n", 1)[0]  # a user factory's docstring says what it measures
    ind = made if isinstance(made, Indicator) else Indicator(name, made, params=dict(params), about=about)
    if key is not None:
        with _LOCK:
            ind = _INSTANCES.setdefault(key, ind)
    return ind


def _stemmed(
    name: str,
    head: HeadFn,
    params: Mapping[str, Any],
    incremental: IncrementalFactory,
    head_grad: HeadGradFn | None = None,
    **extra: Any,
) -> Indicator:
    def value(x: jax.Array, graph: Any) -> jax.Array:
        return head(graph.exposure(x), x, graph)

    return Indicator(name, value, head=head, incremental=incremental, params=dict(params), head_grad=head_grad, **extra)


def _check_names(name: str, factory: Factory, params: Mapping[str, Any]) -> None:
    """Unknown parameter names, listed against the factory's own keyword parameters (a factory that takes
    ``**kwargs``, or whose signature cannot be read, checks its own)."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return
    known = [p.name for p in sig.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(params) - set(known))
    if unknown:
        takes = f"known: {', '.join(known)}" if known else "it takes none"
        raise ValueError(f"bad parameters for indicator {name!r}: unknown parameter {', '.join(unknown)} ({takes})")


def _real(name: str, param: str, value: Any, *, positive: bool = False, optional: bool = False) -> float | None:
    """A parameter as a finite float, or ``ValueError`` naming the indicator and parameter. Parameters arrive from
    YAML and JSON, so ``null``, ``true`` and ``"2"`` must fail here, not as a traced JAX error in the first run;
    a boolean is refused although Python counts it as the integer 0 or 1."""
    if value is None and optional:
        return None
    what = "a positive finite number" if positive else "a finite number"
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise ValueError(f"indicator {name!r}: parameter {param} must be {what}, got {_shown(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range
        number = math.inf
    if not math.isfinite(number) or (positive and not number > 0):
        raise ValueError(f"indicator {name!r}: parameter {param} must be {what}, got {_shown(value)}")
    return number


def _number(name: str, param: str, value: Any, *, positive: bool = False) -> float:
    """:func:`_real` for a parameter that has no ``None`` default."""
    number = _real(name, param, value, positive=positive)
    assert number is not None
    return number


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@register_indicator("reach")
def reach() -> Indicator:
    def head(e: jax.Array, x: jax.Array, graph: Any) -> jax.Array:
        import jax.numpy as jnp

        return graph.total(jnp.log1p(e))

    from kernels.incremental import ReachIncremental

    about = "how widely attended activity reaches accounts: sum of log(1 + exposure) over accounts"
    return _stemmed("reach", head, {}, ReachIncremental, about=about)


@register_indicator("cascade")
def cascade(kappa: float = 2.0, theta: float = 3.0, rho: float = 1.0) -> Indicator:
    kappa = _number("cascade", "kappa", kappa, positive=True)
    theta = _number("cascade", "theta", theta)
    rho = _number("cascade", "rho", rho, positive=True)

    def adopt(e: jax.Array) -> jax.Array:
        import jax
        import jax.numpy as jnp

        return jax.nn.sigmoid(kappa * (jnp.log1p(e) - theta))

    def head(e1: jax.Array, x: jax.Array, graph: Any) -> jax.Array:
        import jax.numpy as jnp

        e2 = graph.exposure(rho * adopt(e1))
        raw = graph.total(adopt(e1 + e2))
        e2_0 = graph.exposure(jnp.full_like(e1, rho * adopt(jnp.zeros((), e1.dtype))))
        raw0 = graph.total(adopt(e2_0))
        return raw - raw0

    def head_grad(e1: jax.Array, x: jax.Array, graph: Any) -> tuple[jax.Array, jax.Array]:
        import jax.numpy as jnp

        # adopt(e) = sigmoid(kappa (log(1 + e) - theta)) = 1 / (1 + t), t = (e^theta / (1 + e))^kappa: a Hill
        # function, so one power (products alone for a whole kappa) replaces log1p and the sigmoid's exp, and
        # adopt'(e) = kappa adopt (1 - adopt) / (1 + e). t overflows to inf exactly where adopt is 0, never to NaN.
        # dH/de1 = adopt'(u) + rho adopt'(e1) W^T adopt'(u), u = e1 + W (rho adopt(e1)): two products per call,
        # against the three passes and the extra elementwise work of jax.grad of the head.
        q = 1.0 + e1
        s, ds = _hill(q, kappa, theta)
        r = q + graph.exposure(rho * s)
        _, du = _hill(r, kappa, theta)
        du = graph.real(du)
        return du + rho * ds * graph.transpose(du), jnp.zeros_like(x)

    from kernels.incremental import CascadeIncremental

    params = {"kappa": kappa, "theta": theta, "rho": rho}
    return _stemmed(
        "cascade", head, params, lambda x, g: CascadeIncremental(x, g, kappa, theta, rho), head_grad=head_grad,
        about="accounts that adopt once exposed past a threshold, directly or one reshare away (two-hop cascade)",
    )  # fmt: skip


def _hill(q: jax.Array, kappa: float, theta: float) -> tuple[jax.Array, jax.Array]:
    """(adopt, d adopt / de) at q = 1 + e for adopt(e) = sigmoid(kappa (log(1 + e) - theta))."""
    import jax
    import jax.numpy as jnp

    if abs(theta) > 30.0:  # e^theta itself would overflow or underflow float32
        t = jnp.exp(kappa * (theta - jnp.log(q)))
    elif float(kappa).is_integer() and 1 <= kappa <= 16:
        t = jax.lax.integer_pow(math.exp(theta) / q, int(kappa))
    else:
        t = jnp.exp(kappa * jnp.log(math.exp(theta) / q))
    s = 1.0 / (1.0 + t)
    return s, kappa * s * (1.0 - s) / q


def _saturating(
    name: str,
    aggregate: Callable[[jax.Array, Any], jax.Array],
    evaluator: Callable[[np.ndarray, Any, float], IncrementalEvaluator],
    factory: Factory,
    capacity_per_agent: float,
    capacity: float | None,
    about: str,
) -> Indicator:
    """v = K (1 − exp(−S/K)) of a population-wide sum S = ``aggregate(e, graph)``; K = ``capacity``, or
    ``capacity_per_agent`` · n (the full population's n when a study restricts the graph: ``scaled``). The
    sequential ``evaluator(x, graph, K)`` tracks S."""
    capacity_per_agent = _number(name, "capacity_per_agent", capacity_per_agent, positive=True)
    capacity = _real(name, "capacity", capacity, positive=True, optional=True)

    def head(e: jax.Array, x: jax.Array, graph: Any) -> jax.Array:
        import jax.numpy as jnp

        k = capacity if capacity is not None else capacity_per_agent * jnp.asarray(graph.n, e.dtype)
        return k * -jnp.expm1(-aggregate(e, graph) / k)

    def incremental(x: np.ndarray, g: Any) -> IncrementalEvaluator:
        return evaluator(x, g, capacity if capacity is not None else capacity_per_agent * g.n)

    params = {"capacity_per_agent": capacity_per_agent, "capacity": capacity}
    scaled = None if capacity is not None else (lambda n: factory(capacity_per_agent, capacity_per_agent * n))
    return _stemmed(name, head, params, incremental, scaled=scaled, about=about)


@register_indicator("saturation")
def saturation(capacity_per_agent: float = 1.0, capacity: float | None = None) -> Indicator:
    from kernels.incremental import SaturationIncremental

    def reached(e: jax.Array, g: Any) -> jax.Array:
        import jax.numpy as jnp

        return g.total(jnp.log1p(e))

    return _saturating(
        "saturation", reached, SaturationIncremental, saturation,
        capacity_per_agent, capacity, "a population-wide response to reach that saturates at capacity K",
    )  # fmt: skip


@register_indicator("saturated_exposure")
def saturated_exposure(capacity_per_agent: float = 1.0, capacity: float | None = None) -> Indicator:
    from kernels.incremental import SaturatedLinearIncremental

    def evaluator(x: np.ndarray, g: Any, k: float) -> IncrementalEvaluator:
        return SaturatedLinearIncremental(x, g, attention_received(g), k)

    return _saturating(
        "saturated_exposure", lambda e, g: g.total(e), evaluator, saturated_exposure, capacity_per_agent, capacity,
        "a response to total attended activity that saturates at capacity K: a nonlinear f of a linear c.x",
    )  # fmt: skip


@register_indicator("exposure")
def exposure() -> Indicator:
    def head(e: jax.Array, x: jax.Array, graph: Any) -> jax.Array:
        return graph.total(e)

    def head_grad(e: jax.Array, x: jax.Array, graph: Any) -> tuple[jax.Array, jax.Array]:
        import jax.numpy as jnp

        return graph.real(jnp.ones_like(e)), jnp.zeros_like(x)

    from kernels.incremental import LinearIncremental

    def incremental(x: np.ndarray, g: Any) -> IncrementalEvaluator:
        return LinearIncremental(x, g, attention_received(g))

    about = "total attended activity: every unit of activity times the attention it receives"
    return _stemmed("exposure", head, {}, incremental, head_grad=head_grad, linear=True, about=about)


@register_indicator("activity")
def activity() -> Indicator:
    def head(e: jax.Array, x: jax.Array, graph: Any) -> jax.Array:
        return graph.total(x)

    def head_grad(e: jax.Array, x: jax.Array, graph: Any) -> tuple[jax.Array, jax.Array]:
        import jax.numpy as jnp

        return jnp.zeros_like(e), graph.real(jnp.ones_like(x))

    from kernels.incremental import LinearIncremental

    def incremental(x: np.ndarray, g: Any) -> IncrementalEvaluator:
        return LinearIncremental(x, g, np.ones(g.n))

    about = "total activity, attention aside"
    return _stemmed("activity", head, {}, incremental, head_grad=head_grad, linear=True, about=about)


def attention_received(graph: Any) -> np.ndarray:
    """(W^T 1)_i = sum_j W_ji: the attention agent i receives per unit of its activity (float64, numpy)."""
    return np.bincount(graph.source, weights=np.asarray(graph.weight, np.float64), minlength=graph.n)


def linear_closed_form(indicator: Indicator | str, x: np.ndarray, graph: Any) -> np.ndarray:
    """Exact Aumann–Shapley attribution of a built-in linear indicator (float64, numpy): phi_i = c_i x_i, the
    test oracle at any N."""
    name = indicator if isinstance(indicator, str) else indicator.name
    x = np.asarray(x, np.float64)
    if name == "exposure":
        return x * attention_received(graph)
    if name == "activity":
        return x.copy()
    raise ValueError(f"no closed form for indicator {name!r} (exposure and activity have one)")


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
