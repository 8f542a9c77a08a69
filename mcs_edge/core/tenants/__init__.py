"""Tenants: the immutable lookup from names (SNI, Host, URL path, SIP domain) to a tenant."""

from mcs_edge.core.tenants.table import TenantTable

__all__ = ["TenantTable"]
