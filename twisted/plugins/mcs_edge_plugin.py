from twisted.application.service import ServiceMaker

mcs_edge = ServiceMaker(
    "mcs_edge",
    "mcs_edge.tap",
    "SIP/WebRTC edge for TVox platforms (SIP over WSS/TLS, media relay, TURN, HTTPS proxy)",
    "mcs-edge",
)
