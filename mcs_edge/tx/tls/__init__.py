"""TLS adapters. In: ClientHellos (``certificates``: per-tenant context by SNI), the shared HTTPS port split
between HTTPS and TURN over TLS (``front``), ACME orders and challenges (``acme``). Out: TLS contexts and
certificate files for the listeners and the hand-off."""
