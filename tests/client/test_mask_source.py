"""Masking keys come from their own (strong) source; ids and jitter from the fast one."""

from __future__ import annotations

import random

from metered_realtime.core.client import ClientConnection
from tests.helpers import Harness


class Counting(random.Random):
    def __init__(self) -> None:
        super().__init__(3)
        self.bits: list[int] = []

    def getrandbits(self, k: int, /) -> int:
        self.bits.append(k)
        return super().getrandbits(k)


def test_masking_keys_come_from_mask_rng() -> None:
    masks, ids = Counting(), Counting()
    h = Harness()
    h.client = ClientConnection(h.config, ids, mask_rng=masks)
    h.connect()
    masks.bits.clear()
    ids.bits.clear()
    h.client.publish("room", {"n": 1}, h.now)
    h.pump()
    assert masks.bits == [32]  # one frame, one 32-bit key
    assert 32 not in ids.bits  # the request id came from the other source
    assert ids.bits


def test_without_mask_rng_one_source_does_everything() -> None:
    one = Counting()
    h = Harness(rng=one)
    h.connect()
    one.bits.clear()
    h.client.publish("room", {"n": 1}, h.now)
    h.pump()
    assert 32 in one.bits


def test_the_signalling_client_masks_with_the_os_source() -> None:
    from metered_realtime.adapters.signalling import SignallingClient

    client = SignallingClient(api_key="pk_dev_local", url="ws://127.0.0.1:8787")
    assert isinstance(client._core._mask_rng, random.SystemRandom)
    assert not isinstance(client._core._rng, random.SystemRandom)
