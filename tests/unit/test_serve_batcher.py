"""The front's batcher: a lone request on an idle model goes at once; concurrent ones share an envelope.

Judged by order and envelope sizes on a fake model server that answers when the test lets it, never
by millisecond timers: a busy CI machine stretches every timer alike, so a test that depends on two
timers racing fails by chance. Delays are set to an hour where the behaviour under test must not
wait for them (a lone request, a full batch), so waiting for one would hang the test, not pass it.
"""

from __future__ import annotations

import asyncio

from image_classifier.serving.batching import Answer, Batcher, unpack

AN_HOUR = 3600.0
GENEROUS = 60.0  # seconds a test waits for what must happen at once


class GatedModelServer:
    """Records each envelope's size and answers one 200 per part once ``gate`` is open."""

    def __init__(self, open_at_start: bool = True):
        self.sizes: list[int] = []
        self.gate = asyncio.Event()
        self.in_flight = self.most_in_flight = 0
        if open_at_start:
            self.gate.set()

    async def send(self, envelope: bytes) -> list[Answer]:
        parts = unpack(envelope)
        self.sizes.append(len(parts))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.gate.wait()
        finally:
            self.in_flight -= 1
        return [Answer(200, "application/json", body) for _, body in parts]


async def _until(condition, what: str) -> None:
    """Let the loop run until ``condition()`` holds (it must: the batcher schedules with 0 delay)."""
    async with asyncio.timeout(GENEROUS):
        while not condition():
            await asyncio.sleep(0)
    assert condition(), what


def test_a_lone_request_is_not_delayed():
    async def scenario() -> GatedModelServer:
        server = GatedModelServer()
        batcher = Batcher(server.send, size=16, delay_seconds=AN_HOUR)  # a delay nobody would sit through
        for i in range(3):
            answer = await asyncio.wait_for(batcher.submit({}, f"{i}".encode()), GENEROUS)
            assert answer.body == f"{i}".encode()
        return server

    assert asyncio.run(scenario()).sizes == [1, 1, 1]


def test_concurrent_requests_share_envelopes_and_each_gets_its_own_answer():
    """Eight clients that submit in the same turn of the loop leave together; each answered client
    submits again at once, so the next eight fill a batch without waiting for the delay."""

    async def scenario() -> GatedModelServer:
        server = GatedModelServer()
        batcher = Batcher(server.send, size=8, delay_seconds=AN_HOUR)

        async def client(k: int) -> None:
            for i in range(5):
                body = f"{k}-{i}".encode()
                assert (await batcher.submit({}, body)).body == body

        await asyncio.wait_for(asyncio.gather(*(client(k) for k in range(8))), GENEROUS)
        return server

    assert asyncio.run(scenario()).sizes == [8, 8, 8, 8, 8]


def test_with_one_envelope_in_flight_requests_wait_in_the_front_and_leave_as_one_larger_batch():
    async def scenario(max_in_flight: int) -> GatedModelServer:
        server = GatedModelServer(open_at_start=False)
        batcher = Batcher(server.send, size=16, delay_seconds=0.0, max_in_flight=max_in_flight)
        first = asyncio.ensure_future(batcher.submit({}, b"first"))
        await _until(lambda: server.sizes == [1], "a lone request goes at once")
        later = []
        for i in range(5):  # arriving one after another while the first is at the model
            later.append(asyncio.ensure_future(batcher.submit({}, f"later-{i}".encode())))
            await _until(lambda n=i: len(batcher.pending) + sum(server.sizes) >= n + 2, "submitted")
            for _ in range(5):
                await asyncio.sleep(0)  # a few turns of the loop: time for a 0-delay timer to fire
        server.gate.set()
        answers = await asyncio.wait_for(asyncio.gather(first, *later), GENEROUS)
        assert [a.body for a in answers] == [b"first", *(f"later-{i}".encode() for i in range(5))]
        return server

    capped, uncapped = asyncio.run(scenario(1)), asyncio.run(scenario(0))
    assert capped.sizes == [1, 5] and capped.most_in_flight == 1  # waited in the front, then left together
    assert uncapped.sizes == [1, 1, 1, 1, 1, 1] and uncapped.most_in_flight == 6  # each went on its own


def test_an_envelope_answer_splits_into_one_answer_per_request_and_a_failure_applies_to_all():
    from image_classifier.serving.batching import ENVELOPE_TYPE, Answer, pack, split

    envelope = pack(
        [
            ({"status": 200, "content_type": "application/json", "timing": {"worker": 3.0}}, b"a"),
            ({"status": 400, "content_type": "application/json"}, b"b"),
        ]
    )
    parts = split(Answer(200, ENVELOPE_TYPE, envelope, round_trip_ms=7.0))
    assert [(p.status, p.body, p.worker_timing, p.round_trip_ms) for p in parts] == [
        (200, b"a", {"worker": 3.0}, 7.0),
        (400, b"b", {}, 7.0),
    ]
    failed = Answer(503, "application/json", b'{"error": "no worker"}')
    assert split(failed) == [failed]
