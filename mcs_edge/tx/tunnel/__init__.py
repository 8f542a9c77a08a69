"""The per-tenant WireGuard backhaul. In: the configuration ([tunnel], tenants.tunnel), reloads, admin
requests for a tenant's wg-quick file. Out: a wireguard-go interface programmed over its UAPI socket,
tunnel metrics (``wireguard``)."""
