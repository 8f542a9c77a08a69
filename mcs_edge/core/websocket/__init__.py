"""mcs_edge.core.websocket: the sans-IO WebSocket server side (RFC 6455) of SIP over WSS (RFC 7118).

``rfc6455``: opening-handshake checks and answer, the frame decoder (unmasking, UTF-8 validation,
fragmentation, size limits, close codes) and the server's frame encoder.
"""
