"""SIP adapters. In: SIP over WebSocket (``websocket``: upgrades taken over from the HTTPS front) and SIP over
TLS (``stream``: the mobile app's listener); SIP over UDP from the PBXs (``router``). Out: parsed messages to
the sans-IO proxy core (:mod:`mcs_edge.core.sip.proxy`) and the bytes it decides to send, on the right flow."""
