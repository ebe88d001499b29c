"""Fuzz sip.hep.decode: any bytes give a HepPacket or a HepError, nothing else."""

from harness import run

from sip import hep


def target(data: bytes) -> None:
    try:
        p = hep.decode(data)
    except hep.HepError as exc:
        assert exc.reason
        return
    assert isinstance(p.payload, bytes) and p.payload


if __name__ == "__main__":
    run(target)
