"""The wallet service: wallets, balances from a double-entry ledger, holds."""
