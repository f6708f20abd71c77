"""The suite's loopback guard fails traffic to any other address."""

from __future__ import annotations

import socket

import pytest

from tests.conftest import NonLoopbackTraffic


def test_connect_to_a_non_loopback_address_fails() -> None:
    with socket.socket() as s, pytest.raises(NonLoopbackTraffic):
        s.connect(("192.0.2.1", 9))


def test_datagram_to_a_public_stun_server_fails() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, pytest.raises(NonLoopbackTraffic):
        s.sendto(b"x", ("74.125.250.129", 19302))


def test_loopback_is_allowed() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        assert s.sendto(b"x", s.getsockname()) == 1
