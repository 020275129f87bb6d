"""The blockchain service: registry of chains, cross-chain transfers with compensation, status tracking."""
