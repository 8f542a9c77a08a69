"""Load measurement and overload control, sans-IO: the loop-lag histogram and the admission gate.

See :mod:`mcs_edge.core.load.control`.
"""

from __future__ import annotations

from .control import LAG_BUCKETS, AdmissionGate, LagHistogram, OverloadSettings, RateMeter

__all__ = ["LAG_BUCKETS", "AdmissionGate", "LagHistogram", "OverloadSettings", "RateMeter"]
