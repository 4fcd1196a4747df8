"""What the session subscribes to at each connection, and what the broker will not allow.

A broker refuses a filter in one of two ways. The standard one is a SUBACK return code
of 0x80 for it. RabbitMQ's MQTT plugin (3.10) instead closes the connection at a
SUBSCRIBE holding a filter its topic permissions refuse, so a single packet with every
group's filter would take the whole link down, data included, at every reconnect.

So: the first connection subscribes to every filter in one packet. If the connection
is lost before that SUBACK, the following connections subscribe one filter at a time,
each after the last one's SUBACK; a filter whose SUBSCRIBE loses the connection twice
is taken as refused; a loss more than STRIKE_WINDOW seconds after the SUBSCRIBE is not
counted (the link, not the filter). A refused filter, either way, is logged at ERROR
(`subscription_refused`) and left out of the following connections' subscriptions,
until `retry_refused` (a reload) lets it be tried again.

No I/O here: `MqttSession` sends what `start` and `acknowledged` return and reports
the losses; the unit tests drive it directly.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import structlog

FAILURE = 0x80  # a SUBACK return code this high refuses the filter (MQTT 3.1.1, 3.9.3)
STRIKES = 2  # connections lost at a filter's own SUBSCRIBE before it counts as refused
STRIKE_WINDOW = 5.0  # seconds: a loss later than this after the SUBSCRIBE is the network's


class Subscriber:
    def __init__(
        self,
        log: structlog.typing.FilteringBoundLogger,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._clock = clock
        self._sent_at = 0.0
        self.one_at_a_time = False
        self.refused: set[str] = set()  # by the broker: left out until retry_refused
        self._strikes: Counter[str] = Counter()
        self._waiting: list[str] = []  # one at a time: the filters still to send
        self._sent: list[str] | None = None  # the filters of the SUBSCRIBE awaiting SUBACK

    def start(self, filters: Iterable[str]) -> list[str]:
        """A connection is up: the filters of the first SUBSCRIBE (none: send nothing)."""
        wanted = [topic for topic in filters if topic not in self.refused]
        if self.one_at_a_time:
            self._waiting = wanted[1:]
            wanted = wanted[:1]
        self._sent = wanted or None
        self._sent_at = self._clock()
        return wanted

    def acknowledged(self, codes: Sequence[int]) -> list[str]:
        """The SUBACK of the last SUBSCRIBE: the filters of the next one (none: done)."""
        sent, self._sent = self._sent or [], None
        for topic, code in zip(sent, codes, strict=False):
            self._strikes.pop(topic, None)
            if code >= FAILURE:
                self._refuse(topic, code=hex(code))
        if not self._waiting:
            return []
        self._sent, self._waiting = self._waiting[:1], self._waiting[1:]
        self._sent_at = self._clock()
        return self._sent

    def lost(self) -> None:
        """The connection is gone: was it at a SUBSCRIBE?"""
        sent, self._sent, self._waiting = self._sent, None, []
        if not sent or self._clock() - self._sent_at > STRIKE_WINDOW:
            return  # not at a SUBSCRIBE: the network, a broker restart
        if not self.one_at_a_time:
            self.one_at_a_time = True
            self._log.warning(
                "subscribe_lost_connection",
                filters=len(sent),
                then="subscribing one filter at a time, to find one the broker refuses",
            )
            return
        topic = sent[0]
        self._strikes[topic] += 1
        if self._strikes[topic] >= STRIKES:
            del self._strikes[topic]
            self._refuse(topic, code="connection closed")

    def retry_refused(self) -> None:
        """Let the refused filters be tried again (the broker's permissions may have changed)."""
        self.refused.clear()
        self._strikes.clear()

    def _refuse(self, topic: str, *, code: str) -> None:
        self.refused.add(topic)
        self._log.error(
            "subscription_refused",
            topic=topic,
            code=code,
            effect="no configuration arrives on this topic; check the broker's permissions",
        )
