"""Comparing result messages across machines: equal, with floats to a relative tolerance (float32 kernels; other
CPUs may round differently)."""

from __future__ import annotations

import math
from typing import Any

VOLATILE = {"runtime_s", "device"}  # the two fields of a result that depend on the machine, not the data
# Estimates of phi's quadrature error: in float32 at rounding level (1e-7 relative), where two machines' summation
# orders differ by as much as the estimate itself; compared absolutely.
ROUNDING = {"error_estimate", "error_max"}


def assert_close(a: Any, b: Any, path: str = "") -> None:
    """Equal, with floats to 1e-4 relative; ``path`` names where a difference is in the failure."""
    if path.rsplit(".", 1)[-1] in ROUNDING and a is not None and b is not None:
        assert math.isclose(a, b, rel_tol=0.5, abs_tol=1e-5), f"{path}: {a} != {b}"
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6), f"{path}: {a} != {b}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def state_by_did(state: Any) -> tuple[dict[str, float], set[tuple[str, str, float]]]:
    """A state's window keyed by DID, so two states that interned their accounts in another order compare equal:
    each active account's activity, and each edge as (source DID, attender DID, weight)."""
    snap = state.snapshot()
    x = {d: float(v) for d, v in zip(snap.dids, snap.x, strict=True) if v}
    g = snap.graph
    edges = {(snap.dids[s], snap.dids[a], float(w)) for a, s, w in zip(g.attender, g.source, g.weight, strict=True)}
    return x, edges
