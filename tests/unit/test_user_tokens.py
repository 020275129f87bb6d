"""User tokens are verified once per token: the same bytes are not checked again until they
expire, and an expired one is refused as before."""
from __future__ import annotations

import time

import pytest

from services.domain.errors import Unauthenticated
from services.runtime.users import UserVerifier, issue_user_token


@pytest.fixture
def certs(pki):
    return pki


def test_a_token_is_verified_once_and_refused_once_it_has_expired(certs):
    verifier = UserVerifier(certs, leeway_seconds=1)
    token = issue_user_token(certs, "alice", ["user"], ttl_seconds=1)
    first = verifier.verify(token)
    assert first.id == "alice" and not first.is_operator
    assert verifier.verify(token) is first                   # from the cache: no second signature check
    time.sleep(2.5)
    with pytest.raises(Unauthenticated) as refused:
        verifier.verify(token)
    assert refused.value.reason == "USER_TOKEN_EXPIRED"


def test_a_token_changed_by_one_byte_is_not_taken_from_the_cache(certs):
    verifier = UserVerifier(certs)
    token = issue_user_token(certs, "alice", ["user"])
    verifier.verify(token)
    tampered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    with pytest.raises(Unauthenticated):
        verifier.verify(tampered)
