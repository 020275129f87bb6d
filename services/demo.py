"""`diboas demo`: a walk through the platform over REST, through the Envoy gateway, as a new
user would take it: two wallets, a deposit, a send, a bridge and a withdrawal; then a deposit
that compliance screening holds, approved by an operator's review (over gRPC, as `diboas
screenings review` does it), and a send that screening refuses (sanctions). Each step is
printed with the call it makes and what came back. Needs `make run` (or the gateway) up, with
the shipped rules (compliance.yaml: a transaction above 10,000.00 USD is held, and the user
`sanctioned-demo-user` is on the sanctions list)."""
from __future__ import annotations

import asyncio
import codecs
import http.client
import json
import time
import uuid
from decimal import Decimal
from typing import Callable, Iterator

import grpc

from services.cli import review_screening  # the command line's own call
from services.config_files import ConfigError
from services.runtime.config import Topology
from services.runtime.users import issue_user_token

SETTLED = ("TRANSACTION_STATE_COMPLETED", "TRANSACTION_STATE_FAILED")
HELD = "COMPLIANCE_DECISION_HELD"
LARGE, SANCTIONED_USER = "12000.00", "sanctioned-demo-user"      # held, and refused, by the shipped rules
# How long a read that is answered 503 (a service restarting under `make run`'s supervision) is
# tried again, with a growing pause, before the demo gives up on it.
READ_RETRY_SECONDS = 15
# How long a stream may stay silent: a watch sends nothing while its transaction does not change,
# and ends within 300 s.
STREAM_SECONDS = 330


class DemoFailed(Exception):
    pass


class Rest:
    def __init__(self, topology: Topology, out=print):
        self.address, self.certs, self.out = topology.gateway.http, topology.certs_dir, out

    def token(self, user: str) -> str:
        return issue_user_token(self.certs, user, ["user"], ttl_seconds=900)

    def call(self, method: str, path: str, token: str, body: dict | None = None, quiet: bool = False) -> dict:
        """The answer's JSON; DemoFailed for any status but 200. A read answered 503 is tried again
        for up to READ_RETRY_SECONDS (nothing was done, and a restarted service comes back)."""
        if not quiet:
            self.out(f"    {method} {path}" + (f"  {json.dumps(body)}" if body else ""))
        deadline, pause = time.monotonic() + READ_RETRY_SECONDS, 0.2
        while True:
            status, data = self._once(method, path, token, body)
            if status != 503 or method != "GET" or time.monotonic() + pause > deadline:
                break
            time.sleep(pause)
            pause = min(pause * 2, 2.0)
        if status != 200:
            raise DemoFailed(f"{method} {path} answered {status}: {data.get('message', data)}")
        return data

    def stream(self, path: str, token: str) -> Iterator[dict]:
        """The messages of a server-streaming route (GET), each as soon as the gateway passes it
        on: the transcoder sends them as the elements of one JSON array. DemoFailed for any status
        but 200; one answered 503 is tried again as `call` tries a read."""
        deadline, pause = time.monotonic() + READ_RETRY_SECONDS, 0.2
        while True:
            connection = self._connect(STREAM_SECONDS)
            try:
                reply = self._send(connection, "GET", path, token, None)
                if reply.status == 200:
                    try:
                        yield from json_array_elements(reply)
                    except OSError as exc:      # reset, or silent for longer than a watch lasts
                        raise DemoFailed(f"GET {path}: the stream broke off ({exc.strerror or exc})") from None
                    return
                data = json.loads(reply.read() or b"{}")
            finally:
                connection.close()
            if reply.status != 503 or time.monotonic() + pause > deadline:
                raise DemoFailed(f"GET {path} answered {reply.status}: {data.get('message', data)}")
            time.sleep(pause)
            pause = min(pause * 2, 2.0)

    def _connect(self, timeout: float = 30) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.address.host, self.address.port, timeout=timeout)

    def _send(self, connection: http.client.HTTPConnection, method: str, path: str, token: str,
              body: dict | None) -> http.client.HTTPResponse:
        try:
            connection.request(method, path, body=json.dumps(body) if body else None,
                               headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
            return connection.getresponse()
        except OSError as exc:          # refused, reset, timed out
            raise ConfigError(f"the gateway at http://{self.address} does not answer ({exc.strerror or exc}): "
                              "is `make run` running?") from None

    def _once(self, method: str, path: str, token: str, body: dict | None) -> tuple[int, dict]:
        connection = self._connect()
        try:
            reply = self._send(connection, method, path, token, body)
            status, data = reply.status, json.loads(reply.read() or b"{}")
        finally:
            connection.close()
        return status, data


def json_array_elements(reply: http.client.HTTPResponse) -> Iterator[dict]:
    """The elements of the JSON array that `reply` carries, each as soon as all of it has arrived."""
    decoder, utf8, text, opened = json.JSONDecoder(), codecs.getincrementaldecoder("utf-8")(), "", False
    while True:
        chunk = reply.read1(65536)
        text += utf8.decode(chunk, final=not chunk)
        while text := text.lstrip():
            if not opened:
                if text[0] != "[":
                    raise DemoFailed(f"the answer is not a JSON array: {text[:80]!r}")
                opened, text = True, text[1:]
            elif text[0] == "]":
                return
            elif text[0] == ",":
                text = text[1:]
            else:
                try:
                    element, end = decoder.raw_decode(text)
                except ValueError:
                    break                   # the rest of it has not arrived yet
                text = text[end:]
                yield element
        if not chunk:
            raise DemoFailed("the stream ended before its JSON array was closed")


def _money(amount: str) -> dict:
    return {"currencyCode": "USD", "amount": amount}


def _settle(rest: Rest, token: str, created: dict, out=print, on_held: Callable[[dict], None] | None = None) -> dict:
    """The transaction `created` once settled, followed through WatchTransaction's stream (each
    state it goes through on the way is printed). `on_held` is called once if compliance
    screening holds it (with the transaction as the user sees it)."""
    state, held = created["state"], False
    for message in rest.stream(f"/v1/{created['name']}:watch", token):
        tx = message["transaction"]
        if tx["state"] in SETTLED:
            return tx
        if tx["state"] != state:
            out(f"       {tx['state'].removeprefix('TRANSACTION_STATE_')}"
                + (f" (hold {tx['hold']})" if tx["hold"] else ""))
        state = tx["state"]
        if tx.get("compliance", {}).get("decision") == HELD and not held:
            held = True
            out(f"       {state.removeprefix('TRANSACTION_STATE_')}, compliance HELD: {tx['compliance']['reason']} "
                f"({tx['compliance']['screening']})")
            if on_held is None:
                raise DemoFailed(f"{created['name']} was held by compliance screening; nothing here reviews it")
            on_held(tx)
    raise DemoFailed(f"the watch of {created['name']} ended while it was {state}")


def _approve(topology: Topology, out=print) -> Callable[[dict], None]:
    """What an operator does with a held transaction: reviews its screening (gRPC, as the operator)."""
    def review(tx: dict) -> None:
        screening, reason = tx["compliance"]["screening"], "demo: source of funds checked"
        out(f"    -> an operator reviews it: diboas screenings review {screening} approve --reason '{reason}'")
        try:
            reviewed = asyncio.run(review_screening(topology, screening, approve=True, reason=reason))
        except grpc.aio.AioRpcError as exc:
            raise DemoFailed(f"the review of {screening} failed: {exc.code().name}: {exc.details()}") from None
        out(f"    -> {reviewed.name} approved by {reviewed.review.reviewer}; the saga goes on within seconds")
    return review


def _balance(rest: Rest, token: str, wallet: str, expected: str | None = None) -> str:
    """The available balance once nothing is held any more (the wallet settled its events)."""
    deadline = time.monotonic() + 30
    while True:
        w = rest.call("GET", f"/v1/{wallet}", token, quiet=True)["wallet"]
        held, available = Decimal(w["heldBalance"]["amount"]), w["availableBalance"]["amount"]
        if not held and (expected is None or available == expected) or time.monotonic() > deadline:
            return available
        time.sleep(0.1)


def run(topology: Topology, out=print) -> int:
    rest = Rest(topology, out)
    run_id = uuid.uuid4().hex[:6]
    alice, bob = f"alice-{run_id}", f"bob-{run_id}"
    a_token, b_token = rest.token(alice), rest.token(bob)
    out(f"diBoaS demo over REST at http://{rest.address} (users {alice} and {bob}, user JWTs from certs/out)")

    def step(title: str) -> None:
        out(f"\n{title}")

    def transact(kind: str, amount: str, on_held: Callable[[dict], None] | None = None, **fields) -> dict:
        body = {"type": f"TRANSACTION_TYPE_{kind}", "amount": _money(amount), **fields}
        created = rest.call("POST", f"/v1/transactions?requestId={uuid.uuid4()}", a_token, body)["transaction"]
        out(f"    -> {created['name']} {created['state'].removeprefix('TRANSACTION_STATE_')}; "
            f"watching it (GET /v1/{created['name']}:watch)...")
        tx = _settle(rest, a_token, created, out, on_held)
        out(f"    -> {tx['state'].removeprefix('TRANSACTION_STATE_')}"
            + (f": {tx['failureReason']}" if tx["failureReason"] else ""))
        return tx

    try:
        step(f"1. {alice} and {bob} open USD wallets")
        a = rest.call("POST", f"/v1/wallets?requestId={uuid.uuid4()}", a_token, {"currencyCode": "USD"})["wallet"]
        b = rest.call("POST", f"/v1/wallets?requestId={uuid.uuid4()}", b_token, {"currencyCode": "USD"})["wallet"]
        out(f"    -> {a['name']} ({alice}), {b['name']} ({bob})")

        step("2. quotes for a 100.00 USD deposit, from every payment provider at once")
        quotes = rest.call("POST", "/v1/providers:getQuotes", a_token,
                           {"direction": "PAYMENT_DIRECTION_PAY_IN", "amount": _money("100.00")})
        for q in quotes.get("quotes", []):
            out(f"    -> {q['provider']:<26} fee {q['fee']['amount']:>6}  total cost {q['totalCost']['amount']:>6}")

        step(f"3. {alice} deposits 100.00 USD (the provider service picks the cheapest healthy provider)")
        tx = transact("DEPOSIT", "100.00", destinationWallet=a["name"])
        out(f"    -> paid in by {tx['provider']} ({tx['providerPayment']}); "
            f"balance {_balance(rest, a_token, a['name'], '100.00')}")

        step(f"4. {alice} sends 25.00 USD to {bob}")
        transact("SEND", "25.00", sourceWallet=a["name"], destinationWallet=b["name"])
        out(f"    -> {alice} {_balance(rest, a_token, a['name'], '75.00')}, "
            f"{bob} {_balance(rest, b_token, b['name'], '25.00')}")

        step(f"5. {alice} bridges 10.00 USD from ethereum to polygon (lock, bridge, mint; compensated on failure)")
        tx = transact("BRIDGE", "10.00", sourceWallet=a["name"], sourceChain="chains/ethereum",
                      targetChain="chains/polygon", destinationAddress="0x000000000000000000000000000000000000d1b0")
        for ref in tx.get("chainTransactions", []):
            out(f"    -> {ref['chain']:<16} {ref['transactionHash'][:18]}...  block {ref['blockNumber']}")

        step(f"6. {alice} withdraws 20.00 USD (held, paid out by a provider, then captured)")
        tx = transact("WITHDRAW", "20.00", sourceWallet=a["name"])
        if tx["state"] == "TRANSACTION_STATE_COMPLETED":
            out(f"    -> paid out by {tx['provider']} ({tx['providerPayment']})")

        step(f"7. {alice} deposits {LARGE} USD: compliance screening holds a transaction above 10,000.00 USD "
             f"for an operator's review")
        tx = transact("DEPOSIT", LARGE, on_held=_approve(topology, out), destinationWallet=a["name"])
        out(f"    -> balance {_balance(rest, a_token, a['name'], '12045.00')}")

        step(f"8. {alice} sends 5.00 USD to a wallet of {SANCTIONED_USER}, who is on the sanctions list")
        s_token = rest.token(SANCTIONED_USER)
        listed = rest.call("POST", f"/v1/wallets?requestId={uuid.uuid4()}", s_token, {"currencyCode": "USD"})["wallet"]
        tx = transact("SEND", "5.00", sourceWallet=a["name"], destinationWallet=listed["name"])
        out(f"    -> compliance {tx.get('compliance', {}).get('decision', 'none').removeprefix('COMPLIANCE_DECISION_')}"
            f"; nothing was held: {alice} {_balance(rest, a_token, a['name'], '12045.00')}")

        step("9. where the money is")
        out(f"    -> {alice}: {_balance(rest, a_token, a['name'])} USD, {bob}: {_balance(rest, b_token, b['name'])} USD")
        listed = rest.call("GET", f"/v1/transactions?wallet={a['name']}", a_token, quiet=True)["transactions"]
        out(f"    -> {len(listed)} transactions on {alice}'s wallet; {bob} cannot see {alice}'s wallet:")
        try:
            rest.call("GET", f"/v1/{a['name']}", b_token)
        except DemoFailed as refused:
            out(f"    -> {refused}")
    except DemoFailed as exc:
        out(f"\ndemo failed: {exc}")
        return 1
    out("\nDone. Every step above went through Envoy (REST -> gRPC over mTLS) to the services.")
    return 0
