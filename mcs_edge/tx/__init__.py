"""mcs_edge.tx."""
