"""mcs_edge.core.media."""
