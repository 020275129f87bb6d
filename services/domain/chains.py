"""What the platform accepts as an on-chain address, wherever one is taken (a BRIDGE
transaction, a cross-chain transfer): one rule, so a transaction is never accepted for an
address the transfer would then refuse. No grpc."""
from __future__ import annotations

MAX_ADDRESS_LENGTH = 128


def address_problem(address: str) -> str | None:
    """Why `address` cannot receive a transfer, or None."""
    if not address:
        return "is required: the address on the target chain that receives the money"
    if len(address) > MAX_ADDRESS_LENGTH or not address.isprintable() or " " in address:
        return f"must be at most {MAX_ADDRESS_LENGTH} printable characters without spaces"
    return None
