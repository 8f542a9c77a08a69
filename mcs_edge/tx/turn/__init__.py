"""STUN/TURN adapters. In: STUN/TURN over UDP/TCP (``server``) and over TLS handed over by the shared-port front;
the iceServers endpoint (``api``). Out: relayed data from the sans-IO TURN core (:mod:`mcs_edge.core.stun.turn`)."""
