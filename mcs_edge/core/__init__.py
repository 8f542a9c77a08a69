"""mcs_edge.core."""
