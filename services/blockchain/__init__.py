"""The blockchain service: registry of chains, cross-chain transfers (issue 4 builds it)."""
