"""mcs_edge.core.shaping."""
