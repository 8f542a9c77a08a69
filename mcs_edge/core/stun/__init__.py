"""mcs_edge.core.stun: sans-IO STUN (RFC 8489), ICE-lite (RFC 8445, RFC 7675) and TURN (RFC 8656).

- ``message``: the STUN codec (fast ``parse_view`` + typed ``Message``), integrity, fingerprint, keys.
- ``channel_data``: TURN ChannelData framing and STUN/ChannelData stream framing for TCP/TLS.
- ``ice_lite``: ``IceLiteResponder``, the connectivity-check responder and consent tracker of a leg.
- ``turn``: ``TurnServer``, allocations, permissions, channels and the relay decisions of a listener.
- ``peer_policy``: which peer addresses TURN may relay to (``PeerPolicy``).
"""
