"""The per-tenant WireGuard backhaul: keys, peer sets, the UAPI text protocol, wg-quick files (sans-IO)."""
