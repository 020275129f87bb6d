"""The transaction types: one saga object each, registered here. A new type is its proto enum
value (and fields), one module in this package, and one line in `SAGAS` (docs/adding-a-transaction-type.md)."""
from __future__ import annotations

from services.domain.errors import InvalidArgument

from .bridge import Bridge
from .deposit import Deposit
from .saga import Saga
from .send import Send
from .withdraw import Withdraw


class Sagas:
    """The saga of each transaction type, by its name (SEND, ...)."""

    def __init__(self, *sagas: Saga):
        self._by_type = {saga.type: saga for saga in sagas}

    @property
    def types(self) -> list[str]:
        return list(self._by_type)

    def of(self, kind: str) -> Saga:
        """The saga of `kind`; INVALID_ARGUMENT naming transaction.type for any other."""
        saga = self._by_type.get(kind)
        if saga is None:
            choices = ", ".join(self.types[:-1]) + f" or {self.types[-1]}"
            raise InvalidArgument.field("transaction.type", f"is required: {choices} (got {kind or 'none'})")
        return saga


SAGAS = Sagas(Send(), Deposit(), Withdraw(), Bridge())
