"""The provider service: the registry of payment providers, quotes, selection, and payments with failover."""
