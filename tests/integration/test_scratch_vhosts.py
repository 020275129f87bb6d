"""The tests' scratch RabbitMQ virtual hosts (tools/rabbitmq.py, ScratchVhosts): each one new and
usable by guest, and none left on the broker once given back and closed."""
from __future__ import annotations

import aio_pika
import pytest

from tools.rabbitmq import ScratchVhosts, rabbitmqctl

from conftest import require_rabbitmq, take_vhost

pytestmark = pytest.mark.rabbitmq


def vhosts() -> set[str]:
    return set(rabbitmqctl("list_vhosts", "--quiet", "--no-table-headers").split())


async def test_each_vhost_is_new_usable_and_gone_after_close():
    require_rabbitmq()
    pool = ScratchVhosts(prefix="diboas-test-pool")
    try:
        first, second = take_vhost(pool), take_vhost(pool)
        assert first != second
        for url in (first, second):
            connection = await aio_pika.connect(url, timeout=10)
            async with connection:
                channel = await connection.channel()
                await channel.declare_queue("probe", auto_delete=True)
        names = {url.rsplit("/", 1)[1] for url in (first, second)}
        assert names <= vhosts()
        pool.give_back(first)
        pool.give_back(second)
    finally:
        pool.close()
    assert not {v for v in vhosts() if v.startswith("diboas-test-pool-")}, "a vhost was left on the broker"


def test_close_deletes_what_was_made_ahead_or_half_made_and_never_given_back():
    require_rabbitmq()
    pool = ScratchVhosts(prefix="diboas-test-pool")
    try:
        kept = take_vhost(pool).rsplit("/", 1)[1]       # taken, never given back
        named = pool._named()                           # named, its making never begun or failed
        assert kept in vhosts() and named not in vhosts()
    finally:
        pool.close()
    assert not {v for v in vhosts() if v.startswith("diboas-test-pool-")}, "a vhost was left on the broker"
