"""Fuzz sip.capture.read_capture: damaged files give datagrams or a CaptureError."""

import struct

from harness import run

from sip.capture import CaptureError, read_capture

PCAP_HEAD = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)


def target(data: bytes) -> None:
    for blob in (data, PCAP_HEAD + data):
        try:
            for d in read_capture(blob):
                assert isinstance(d.payload, bytes)
        except CaptureError:
            pass


if __name__ == "__main__":
    run(target)
