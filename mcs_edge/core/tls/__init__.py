"""mcs_edge.core.tls: TLS decisions taken before any cryptography.

``client_hello``: the ClientHello of a new connection read from its first bytes (RFC 8446 s.4.1.2,
RFC 6066 s.3 server_name, RFC 7301 s.3.1 ALPN), bounded, so the adapter can choose the tenant's
certificate, or refuse an unknown name, before OpenSSL sees the connection.
"""
