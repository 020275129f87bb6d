"""The provider service: registry of payment providers with failover (issue 4 builds it)."""
