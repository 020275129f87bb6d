"""The compliance service: screening of transactions before their money moves (domain and rules only, so far)."""
