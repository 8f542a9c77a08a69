"""Media adapters. In: datagrams on relay ports (``relay``: uvloop datagram endpoints or listenUDP) and calls to
``echo@<domain>`` (``echo``). Out: packets forwarded by the sans-IO media core (:mod:`mcs_edge.core.media`)."""
