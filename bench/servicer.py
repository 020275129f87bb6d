"""The servicer both stacks serve: WalletService.GetWallet answering one small fixed Wallet.

Only GetWallet is overridden; the other methods keep the generated UNIMPLEMENTED bodies.
The handler does no work at all, so what the benchmark measures is the transport and the
runtime around the handler, never the handler itself.
"""
from __future__ import annotations

from diboas.common.v1 import common_pb2
from diboas.wallet.v1 import wallet_pb2, wallet_pb2_grpc

GRPC_SERVICE = "diboas.wallet.v1.WalletService"
METHOD = f"/{GRPC_SERVICE}/GetWallet"

RESPONSE = wallet_pb2.GetWalletResponse(wallet=wallet_pb2.Wallet(
    name="wallets/bench",
    owner_id="owners/bench",
    currency_code="USD",
    available_balance=common_pb2.Money(currency_code="USD", amount="1250.00"),
    held_balance=common_pb2.Money(currency_code="USD", amount="0.00"),
))
REQUEST = wallet_pb2.GetWalletRequest(name="wallets/bench")


class BenchWalletServicer(wallet_pb2_grpc.WalletServiceServicer):
    async def GetWallet(self, request, context):  # noqa: N802 (generated name)
        return RESPONSE
