"""mcs_edge.core.stun."""
