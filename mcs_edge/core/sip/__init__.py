"""mcs_edge.core.sip: the sans-IO SIP core.

``_abnf`` (RFC 3261 s.25 grammar as regexes), ``headers`` (header table and parsed values),
``message`` (parse / change / serialise requests and responses), ``framing`` (WebSocket,
datagram and stream framing, RFC 5626 keepalives) and ``transaction`` (RFC 3261 s.17 + RFC 6026
state machines with ``get_timer``/``handle_timer``).
"""
