"""The ``reader`` option on libpcap: which batch reader a capture gets, that both deliver the
same stream, the environment variable, and the option's checks.

Traffic goes to 127.0.0.1 in this machine's own namespace only.
"""

import logging
import socket
import threading
import time

import pytest

from udpcap_ctypes import UdpcapSocket, _platform

pytestmark = pytest.mark.live

DUMP = "batches: pcap_dispatch into memory (pcap_dump over fmemopen)"
NEXT_EX = "pcap_next_ex, one call per frame"


def _stream(port, count):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for seq in range(count):
            sender.sendto(b"%06d" % seq + b"." * (seq % 300), ("127.0.0.1", port))
            if seq % 50 == 49:
                time.sleep(0.002)         # the default lo ring holds 256 frames


def _receive(sock, count):
    sock.settimeout(2.0)
    got = []
    while len(got) < count:
        try:
            got.append(sock.recvfrom(65535)[0])
        except socket.timeout:
            break
    return got


@pytest.mark.parametrize("reader, description", [(None, DUMP), ("batch", DUMP),
                                                 ("next_ex", NEXT_EX)])
def test_the_reader_option_chooses_the_batch_reader(free_udp_port, reader, monkeypatch,
                                                    description):
    monkeypatch.delenv("UDPCAP_CTYPES_READER", raising=False)
    options = {} if reader is None else {"reader": reader}
    with UdpcapSocket(**options) as sock:
        assert sock.capture_readers() == {}
        sock.bind(("127.0.0.1", free_udp_port))
        assert sock.capture_readers() == {"lo": description}
    assert sock.capture_readers() == {}


def test_the_environment_chooses_for_sockets_that_do_not(free_udp_port, monkeypatch, caplog):
    monkeypatch.setenv("UDPCAP_CTYPES_READER", "next_ex")
    with UdpcapSocket() as sock, UdpcapSocket(reader="batch") as chosen:
        sock.bind(("127.0.0.1", free_udp_port))
        chosen.bind(("127.0.0.1", free_udp_port))
        # Different readers never share a capture.
        assert sock._receiver.captures[0].shared is not chosen._receiver.captures[0].shared
        assert sock.capture_readers() == {"lo": NEXT_EX}
        assert chosen.capture_readers() == {"lo": DUMP}
    monkeypatch.setenv("UDPCAP_CTYPES_READER", "fastest")
    with caplog.at_level(logging.WARNING, logger="udpcap_ctypes"):
        assert _platform.capture_reader(None) == "batch"
    assert "UDPCAP_CTYPES_READER='fastest' is not one of batch, next_ex" in caplog.text


def test_both_readers_deliver_the_same_stream(free_udp_port):
    count = 600
    with UdpcapSocket(reader="batch") as batch, UdpcapSocket(reader="next_ex") as next_ex:
        for sock in (batch, next_ex):
            sock.bind(("127.0.0.1", free_udp_port))
        got = {}
        readers = [threading.Thread(target=lambda s=sock: got.update({s: _receive(s, count)}))
                   for sock in (batch, next_ex)]
        for thread in readers:
            thread.start()
        _stream(free_udp_port, count)
        for thread in readers:
            thread.join(30)
        got_batch, got_next_ex = got[batch], got[next_ex]
        stats = batch.statistics(), next_ex.statistics()
    assert stats[0]["capture_drops"] == stats[1]["capture_drops"] == 0
    assert len(got_batch) == count
    assert got_batch == got_next_ex
    assert stats[0]["frames"] == stats[1]["frames"] == count


@pytest.mark.parametrize("bad, error", [("dispatch", ValueError), ("", ValueError),
                                        (1, TypeError), (b"batch", TypeError)])
def test_a_bad_reader_is_refused_before_anything_opens(bad, error):
    with pytest.raises(error, match="reader must be"):
        UdpcapSocket(reader=bad)
