"""MeshClient: one identity of the topology calling the mesh's services (see __init__.py)."""
from __future__ import annotations

import dataclasses
import os
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TypeVar

from services.runtime.client import Caller, Upstream
from services.runtime.config import Topology, load_topology
from services.runtime.context import within

S = TypeVar("S")
EVERY_OTHER_METHOD = "*"


class MeshClient:
    """Stubs of the mesh's services for one identity: `stub("wallet", WalletServiceStub)`.

    Built from the topology (the services' addresses, identities and policies; the defaults for
    deadlines, retries and the breaker) and the identity's certificate files. Channels open on the
    first call of a service and close with `close()` (or at the end of `async with`)."""

    def __init__(self, topology: Topology, identity: str, *, tracing: bool | None = None):
        self.topology = topology
        self._me = Caller.load(topology, identity)
        self._tracing = topology.observability.tracing if tracing is None else tracing
        self._upstreams: dict[str, Upstream] = {}

    @classmethod
    def from_topology(cls, identity: str, topology: str | os.PathLike | None = None, *,
                      certs_dir: str | os.PathLike | None = None, env: dict[str, str] | None = None) -> MeshClient:
        """The client of `identity`, from the topology file (`topology`, else DIBOAS_TOPOLOGY, else the
        repository's mesh.yaml) with the DIBOAS_* overrides of `env` (default: the environment), and
        the certificates in `certs_dir` (else DIBOAS_CERTS_DIR, else the topology's certs_dir).
        ConfigError, saying what to do, when the identity is unknown or its certificate missing."""
        loaded = load_topology(topology, env)
        if certs_dir is not None:
            loaded = dataclasses.replace(loaded, certs_dir=Path(certs_dir).resolve())
        return cls(loaded, identity)

    @property
    def identity(self) -> str:
        """The short name, as the policies name it (`reporting`)."""
        return self._me.name

    @property
    def spiffe_id(self) -> str:
        """The identity in the certificate and the tokens (`spiffe://diboas.local/client/reporting`)."""
        return self._me.issuer.identity

    def stub(self, service: str, stub_class: type[S]) -> S:
        """The generated stub of `service` (e.g. `stub("wallet", WalletServiceStub)`) with every method
        going through the runtime's call policy: the breaker, the deadline (its own `timeout=`, the
        block's `deadline()`, else the topology's default), this identity's token, retries of
        UNAVAILABLE, metrics and a trace span. A failure raises the matching DomainError."""
        upstream = self._upstreams.get(service)
        if upstream is None:
            config = self.topology.service(service)          # ConfigError naming the known services
            upstream = self._upstreams[service] = Upstream(self.topology, self.identity, config, self._me.files,
                                                           self._me.issuer, tracing=self._tracing, mask_refusals=False)
        return upstream.stub(stub_class)

    @staticmethod
    def deadline(seconds: float) -> AbstractContextManager[None]:
        """`with mesh.deadline(2.0):`: the calls made in the block share a 2 s budget (each gets what
        is left); inside an RPC being served, the sooner of that and the RPC's own deadline."""
        return within(seconds)

    def token_for(self, service: str) -> str:
        """A service JWT of this identity for `service` (for tools such as buf curl; stubs add theirs)."""
        return self._me.issuer.token_for(self.topology.service(service).identity)

    def allowed(self) -> dict[str, tuple[str, ...]]:
        """What the topology's policy lets this identity call: service -> method names, with "*" for
        every method the service's policy does not list by name."""
        found = {}
        for name, service in self.topology.services.items():
            methods = tuple(sorted(m for m, callers in service.policy.items() if self.identity in callers))
            if methods:
                found[name] = methods
        return found

    def breaker_state(self, service: str) -> str:
        """closed, open or half-open: the circuit breaker of this client's calls to `service`."""
        upstream = self._upstreams.get(service)
        return upstream.breaker.state if upstream else "closed"

    async def close(self) -> None:
        for upstream in self._upstreams.values():
            await upstream.close()
        self._upstreams.clear()

    async def __aenter__(self) -> MeshClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
