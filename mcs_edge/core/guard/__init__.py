"""mcs_edge.core.guard."""
