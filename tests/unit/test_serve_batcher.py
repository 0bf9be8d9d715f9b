"""The front's batcher: a lone request on an idle model goes at once; concurrent ones share an envelope."""

from __future__ import annotations

import asyncio
import time

from image_classifier.serving.batching import Answer, Batcher, unpack


class FakeModelServer:
    """Answers each envelope after ``seconds``, one 200 per part, and records the envelope sizes."""

    def __init__(self, seconds: float = 0.05):
        self.seconds = seconds
        self.sizes: list[int] = []

    async def send(self, envelope: bytes) -> list[Answer]:
        parts = unpack(envelope)
        self.sizes.append(len(parts))
        await asyncio.sleep(self.seconds)
        return [Answer(200, "application/json", body) for _, body in parts]


def test_a_lone_request_is_not_delayed():
    async def scenario() -> list[float]:
        server = FakeModelServer(seconds=0.0)
        batcher = Batcher(server.send, size=16, delay_seconds=5.0)  # a delay nobody would sit through
        waits = []
        for i in range(3):
            start = time.perf_counter()
            answer = await batcher.submit({}, f"{i}".encode())
            waits.append(time.perf_counter() - start)
            assert answer.body == f"{i}".encode()
        assert server.sizes == [1, 1, 1]
        return waits

    assert max(asyncio.run(scenario())) < 1.0


def test_concurrent_requests_share_envelopes_and_each_gets_its_own_answer():
    async def scenario() -> FakeModelServer:
        server = FakeModelServer()
        batcher = Batcher(server.send, size=8, delay_seconds=0.02)

        async def client(k: int) -> None:
            for i in range(5):
                body = f"{k}-{i}".encode()
                assert (await batcher.submit({}, body)).body == body

        await asyncio.gather(*(client(k) for k in range(8)))
        return server

    server = asyncio.run(scenario())
    assert sum(server.sizes) == 40 and max(server.sizes) == 8
    assert len(server.sizes) <= 12, server.sizes  # under load the clients just answered wait for each other


def test_with_one_envelope_in_flight_requests_wait_in_the_front_and_leave_as_larger_batches():
    class CountingServer(FakeModelServer):
        def __init__(self) -> None:
            super().__init__(seconds=0.03)
            self.in_flight = self.most_in_flight = 0

        async def send(self, envelope: bytes) -> list[Answer]:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                return await super().send(envelope)
            finally:
                self.in_flight -= 1

    async def scenario(max_in_flight: int) -> CountingServer:
        server = CountingServer()
        batcher = Batcher(server.send, size=16, delay_seconds=0.005, max_in_flight=max_in_flight)

        async def client(k: int) -> None:  # clients out of step, as real ones are
            await asyncio.sleep(0.002 * k)
            for i in range(6):
                body = f"{k}-{i}".encode()
                assert (await batcher.submit({}, body)).body == body
                await asyncio.sleep(0.001 * (k % 5))

        await asyncio.gather(*(client(k) for k in range(16)))
        return server

    capped, uncapped = asyncio.run(scenario(1)), asyncio.run(scenario(0))
    assert capped.most_in_flight == 1 and uncapped.most_in_flight > 1
    assert sum(capped.sizes) == sum(uncapped.sizes) == 96
    assert sum(capped.sizes) / len(capped.sizes) > 1.5 * sum(uncapped.sizes) / len(uncapped.sizes), (capped.sizes, uncapped.sizes)
