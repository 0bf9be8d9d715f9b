"""Cross-request batching done by the front, so that every reply a worker sends MMS holds one prediction.

Why not MMS's own batching: multi-model-server 1.1.11's Java decoder of worker replies
(``ModelResponseDecoder``) reads each prediction's status code and header map without checking
that those bytes have arrived. A reply with several predictions that reaches Java in more than
one socket read, cut inside one of those fields, throws; MMS then kills the worker ("Worker
died") and fails every request it held. The fuzz test found it within a few hundred requests. A
reply with a single prediction is safe: its short fixed head always comes in the first read.

So MMS runs with batch_size=1 and the front gathers concurrent requests (up to
``IMAGE_CLASSIFIER_BATCH_SIZE``, waiting at most ``IMAGE_CLASSIFIER_MAX_BATCH_DELAY_MS``) into one
envelope request; the worker answers each part on its own and returns one envelope, which the
front splits back to the clients.

Envelope: a sequence of parts, each a 4-byte big-endian length + a JSON object of metadata
(request headers one way, ``status``/``content_type`` the other) + a 4-byte length + the body.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

ENVELOPE_TYPE = "application/x-image-classifier-batch"
_LENGTH = struct.Struct(">I")


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes
    worker_timing: dict[str, float] = field(default_factory=dict)  # the worker's stages (serving/timing.py), ms
    round_trip_ms: float = 0.0  # the request to multi-model-server and back
    queued_ms: float = 0.0  # waiting in the batcher for company


def pack(parts: list[tuple[dict, bytes]]) -> bytes:
    out = bytearray()
    for meta, body in parts:
        encoded = json.dumps(meta).encode()
        out += _LENGTH.pack(len(encoded)) + encoded + _LENGTH.pack(len(body)) + body
    return bytes(out)


def unpack(data: bytes) -> list[tuple[dict, bytes]]:
    """The parts of an envelope; ValueError if it is not one (it only ever comes from the front)."""
    parts, offset = [], 0
    view = memoryview(data)
    while offset < len(view):
        chunks = []
        for _ in range(2):
            if offset + 4 > len(view):
                raise ValueError("truncated envelope")
            (length,) = _LENGTH.unpack_from(view, offset)
            offset += 4
            if offset + length > len(view):
                raise ValueError("truncated envelope")
            chunks.append(bytes(view[offset : offset + length]))
            offset += length
        meta = json.loads(chunks[0])
        if not isinstance(meta, dict):
            raise ValueError("envelope metadata is not an object")
        parts.append((meta, chunks[1]))
    return parts


def split(answer: Answer) -> list[Answer]:
    """multi-model-server's answer to an envelope, as one answer per request in it; a failure of MMS
    itself (no worker, a timeout: not an envelope) is one answer that applies to every request."""
    if answer.status != 200 or not answer.content_type.startswith(ENVELOPE_TYPE):
        return [answer]
    return [
        Answer(int(meta["status"]), str(meta["content_type"]), part, dict(meta.get("timing") or {}), answer.round_trip_ms)
        for meta, part in unpack(answer.body)
    ]


@dataclass
class _Pending:
    headers: dict[str, str]
    body: bytes
    answer: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    since: float = field(default_factory=time.perf_counter)


class Batcher:
    """Gathers concurrent requests for one model and sends them as one envelope.

    ``send(envelope)`` forwards an envelope to MMS and returns its parts' answers, or one answer
    that applies to every part (MMS itself failed: no worker, timeout).

    At most ``max_in_flight`` envelopes are at MMS at once (one per worker; 0: no cap). While the
    workers are busy, requests wait here rather than in MMS's queue, so they leave together as one
    larger batch when a worker frees, instead of as many small envelopes queued behind each other.
    """

    def __init__(self, send: Callable[[bytes], Awaitable[list[Answer]]], size: int, delay_seconds: float, max_in_flight: int = 0):
        self.send, self.size, self.delay, self.max_in_flight = send, size, delay_seconds, max_in_flight
        self.pending: list[_Pending] = []
        self.timer: asyncio.TimerHandle | None = None
        self.in_flight = 0  # envelopes sent and not yet answered
        self.last_batch = 1  # requests in the last envelope

    def _worker_free(self) -> bool:
        return not self.max_in_flight or self.in_flight < self.max_in_flight

    async def submit(self, headers: dict[str, str], body: bytes) -> Answer:
        item = _Pending(headers, body)
        self.pending.append(item)
        if len(self.pending) >= self.size and self._worker_free():
            self._flush()
        elif self.timer is None and self._worker_free():
            # low load (nothing in flight, the last envelope alone): go at once, no delay added to a lone
            # request; under load, wait up to the delay for the clients that were just answered
            quiet = self.in_flight == 0 and self.last_batch == 1
            self.timer = asyncio.get_running_loop().call_later(0 if quiet else self.delay, self._flush)
        return await item.answer

    def _flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self._worker_free():
            return  # sent when an envelope comes back
        batch, self.pending = self.pending[: self.size], self.pending[self.size :]
        if batch:
            self.last_batch = len(batch)
            asyncio.get_running_loop().create_task(self._send(batch))

    async def _send(self, batch: list[_Pending]) -> None:
        self.in_flight += 1
        try:
            await self._answer(batch)
        finally:
            self.in_flight -= 1
            if self.pending and self.timer is None:
                # a worker is free: a full batch goes now; otherwise the clients just answered get the delay to join
                full = len(self.pending) >= self.size
                self.timer = asyncio.get_running_loop().call_later(0 if full else self.delay, self._flush)

    async def _answer(self, batch: list[_Pending]) -> None:
        sent = time.perf_counter()
        try:
            answers = await self.send(pack([(item.headers, item.body) for item in batch]))
        except BaseException as exc:  # noqa: BLE001 - every waiting client gets the error
            for item in batch:
                if not item.answer.done():
                    item.answer.set_exception(exc)
            return
        if len(answers) == 1:
            answers = answers * len(batch)
        for i, item in enumerate(batch):
            if item.answer.done():
                continue
            if len(answers) == len(batch):
                item.answer.set_result(replace(answers[i], queued_ms=(sent - item.since) * 1000))
            else:
                item.answer.set_exception(ValueError(f"{len(answers)} answers for {len(batch)} requests"))
