"""agent.cloud.subscriber: what each connection subscribes to, and what the broker refused."""

from __future__ import annotations

import structlog

from agent.cloud.subscriber import Subscriber
from agent.testing import captured_logs

FILTERS = ["a", "b", "c"]


def subscriber() -> Subscriber:
    return Subscriber(structlog.get_logger("test"))


def test_one_subscribe_for_every_filter_and_a_refused_code_left_out_next_time() -> None:
    with captured_logs() as logs:
        sub = subscriber()
        assert FILTERS == sub.start(FILTERS)
        assert [] == sub.acknowledged([1, 0x80, 1])
        sub.lost()  # nothing awaiting a SUBACK: an ordinary loss
        second = sub.start(FILTERS)

    assert (["a", "c"], {"b"}, False) == (second, sub.refused, sub.one_at_a_time)
    assert [("subscription_refused", "b", "0x80", "error")] == [
        (e["event"], e["topic"], e["code"], e["log_level"]) for e in logs
    ]


def test_a_connection_lost_at_the_subscribe_finds_the_refused_filter_one_at_a_time() -> None:
    with captured_logs() as logs:
        sub = subscriber()
        sub.start(FILTERS)
        sub.lost()  # at the whole SUBSCRIBE: from now on one filter at a time
        for _ in range(2):  # "b" closes the connection twice
            assert ["a"] == sub.start(FILTERS)
            assert ["b"] == sub.acknowledged([1])
            sub.lost()
        assert ["a"] == sub.start(FILTERS)
        assert ["c"] == sub.acknowledged([1])
        assert [] == sub.acknowledged([1])

    assert {"b"} == sub.refused
    assert ["subscribe_lost_connection", "subscription_refused"] == [e["event"] for e in logs]
    assert "connection closed" == logs[1]["code"]


def test_one_loss_at_a_filter_is_not_yet_a_refusal() -> None:
    sub = subscriber()
    sub.start(FILTERS)
    sub.lost()
    sub.start(FILTERS)
    sub.acknowledged([1])
    sub.lost()  # at "b", once: the network, perhaps
    sub.start(FILTERS)
    assert ["b"] == sub.acknowledged([1])
    sub.acknowledged([1])  # "b" granted: its strike is forgotten
    sub.lost()
    sub.start(FILTERS)
    sub.acknowledged([1])
    sub.lost()  # "b" again, once since it was granted

    assert set() == sub.refused


def test_a_reload_tries_the_refused_filters_again() -> None:
    sub = subscriber()
    sub.start(FILTERS)
    sub.acknowledged([0x80, 1, 1])
    sub.retry_refused()

    assert FILTERS == sub.start(FILTERS)


def test_a_loss_long_after_the_subscribe_is_the_networks_not_the_filters() -> None:
    now = [0.0]
    sub = Subscriber(structlog.get_logger("test"), clock=lambda: now[0])
    sub.start(FILTERS)
    sub.lost()  # at once: one filter at a time from now on
    for _ in range(3):
        sub.start(FILTERS)
        now[0] += 60.0  # a keepalive time-out, long after the SUBSCRIBE
        sub.lost()

    assert set() == sub.refused
