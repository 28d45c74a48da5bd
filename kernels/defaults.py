"""The defaults every layer shares, written once: the kernels' keyword defaults, ``AttributionConfig``, the daemon's
``Settings`` (so its flags, YAML keys, ``SKYATTR_*`` variables and the README table), and the Grafana dashboard's
threshold lines all read them from here.

Pure constants: importing this module pulls in nothing.
"""

from __future__ import annotations

DEFAULT_INDICATOR = "cascade"  # macro indicator (see `skyattr indicators`)
NODES = 32  # Gauss–Legendre quadrature nodes
DTYPE = "float32"  # floating point precision of the kernels
HEAD = 0.01  # head tier: top fraction of accounts by visibility
MIDDLE = 0.10  # middle tier: the next fraction by visibility
PANEL_SIZE = 100  # accounts in the visibility-biased panel study
TOP_K = 10  # top accounts listed in each result
TAU_RES = 0.2  # alert when the same-game rescaling residual r* exceeds this
TAU_COVERAGE = 0.5  # alert when the panel holds less than this share of the full-scale attribution
ALERT_CLEAR = 0.8  # an active alert resolves once each figure is within this fraction of its threshold
INTERVAL_S = 300.0  # seconds between the daemon's attribution runs (the dashboard's staleness lines too)
STRATIFIED_EPSILON = 0.05  # the stratified panel's target: its weighted tier shares within this of the full scale

__all__ = [
    "ALERT_CLEAR",
    "DEFAULT_INDICATOR",
    "DTYPE",
    "HEAD",
    "INTERVAL_S",
    "MIDDLE",
    "NODES",
    "PANEL_SIZE",
    "STRATIFIED_EPSILON",
    "TAU_COVERAGE",
    "TAU_RES",
    "TOP_K",
]
