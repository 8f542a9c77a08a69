"""mcs_edge.core.sip."""
