"""Input checks shared by the kernels: a wrong input is a ``ValueError`` naming the problem, never a silent
wrong answer."""

from __future__ import annotations

from typing import Any

import numpy as np

DTYPES = {"float32": np.float32, "float64": np.float64}


def check_activity(x: Any, n: int, name: str = "x") -> np.ndarray:
    """Activity vector: 1-D, length n, finite, non-negative. Returned as float64."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric array: {exc}") from exc
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{name} has length {arr.shape[0]} but the graph has n={n} agents")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(f"{name} has non-finite entries (NaN or inf), first at index {int(np.argmax(bad))}")
    neg = arr < 0
    if neg.any():
        raise ValueError(f"{name} has negative entries (activity must be >= 0), first at index {int(np.argmax(neg))}")
    return arr


def check_dtype(dtype: str) -> np.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return np.dtype(DTYPES[dtype])


def check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
