"""Work messages over RabbitMQ: what a message may say (an item, nothing else), and which delay
queue a wait goes through."""
from __future__ import annotations

import pytest

from services.runtime.messaging.rabbit_work import decode, delay_tiers, encode, tier_for


def test_a_work_message_names_an_item_and_decodes_to_it():
    assert encode(7, "tx-1") == b'{"id":7,"item":"tx-1"}'
    assert decode(encode(7, "tx-1")) == (7, "tx-1")


@pytest.mark.parametrize("body", [b"", b"\xff", b"null", b"[7, \"tx\"]", b'{"id": 7}', b'{"id": true, "item": "x"}',
                                  b'{"id": 7.0, "item": "x"}', b'{"id": 0, "item": "x"}', b'{"id": 7, "item": ""}',
                                  b'{"id": 9223372036854775808, "item": "x"}', b'{"id": 7, "item": 5}',
                                  b'{"id": 7, "item": "x", "priority": 9}', b"[" * 200_000,
                                  b'{"id": 7, "item": "\\ud800"}', b'{"id": 7, "item": "a b"}',
                                  b'{"id": 7, "item": "' + b"x" * 129 + b'"}'])
def test_anything_else_is_refused_with_the_reason(body):
    with pytest.raises(ValueError, match="not JSON|not {|more than a work message's 512"):
        decode(body)


def test_delay_queues_double_from_125_ms_up_to_the_longest_wait():
    assert delay_tiers(1) == [125, 250, 500, 1000]
    assert delay_tiers(30)[-1] == 32000 and len(delay_tiers(30)) == 9


@pytest.mark.parametrize(("remaining_ms", "tier"), [(10, 125), (125, 125), (200, 125), (999, 500), (1000, 1000),
                                                    (90_000, 1000)])
def test_a_wait_goes_through_the_largest_delay_queue_it_fills(remaining_ms, tier):
    assert tier_for(remaining_ms, [125, 250, 500, 1000]) == tier
