"""HTTPS adapters. In: HTTP requests on the HTTPS listener (``front``: routing by Host, WebSocket upgrades for
SIP handed to :mod:`mcs_edge.tx.sip.websocket`). Out: the reverse proxy to ``backend_http`` (``proxy``), the
certificate hand-off (``handoff``) and the network check page (``check``)."""
