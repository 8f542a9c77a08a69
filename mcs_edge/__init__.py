"""mcs_edge: the internet edge of TVox platforms.

A SIP/WebRTC session border controller on Twisted: SIP over secure WebSocket and TLS toward each
tenant's PBX, a media relay bridging WebRTC to RTP, STUN/TURN, per-tenant TLS by SNI, shaping and
protection, and an HTTPS reverse proxy. See DESIGN.md for the map.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
