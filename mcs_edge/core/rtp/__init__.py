"""mcs_edge.core.rtp."""
