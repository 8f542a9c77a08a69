"""mcs_edge.core.shaping: token buckets (lazy refill), packet policing and stream pause/resume.

``TokenBucket`` is the primitive; ``try_consume_all`` charges a hierarchy atomically; ``Policer``
drops packets of a leg (optionally inside a tenant bucket); ``Shaper`` tells a stream reader when
to pause and resume.
"""

from __future__ import annotations

from mcs_edge.core.shaping.policer import Policer
from mcs_edge.core.shaping.shaper import Shaper
from mcs_edge.core.shaping.token_bucket import TokenBucket, try_consume_all

__all__ = ["Policer", "Shaper", "TokenBucket", "try_consume_all"]
