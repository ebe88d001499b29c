"""Shared runner for the fuzz targets: atheris when installed, else a stdlib mutation loop.

Run a target by hand from the repository root, e.g.

    /work/venv/bin/python tests/fuzz/fuzz_message.py            # until Ctrl-C (atheris)
    /work/venv/bin/python tests/fuzz/fuzz_message.py -runs=200000

With atheris (`pip install atheris`, needs clang) the run is coverage-guided and takes the
usual libFuzzer flags. Without it, the same target is driven by random byte mutations of the
seed corpus (the recorded Kamailio captures) for `-runs=N` iterations (default 100000), and a
crash prints the input that caused it. These files are not collected by pytest.
"""

from __future__ import annotations

import random
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def seeds() -> list[bytes]:
    """Real HEP datagrams and their SIP payloads from tests/data."""
    from sip import hep
    from sip.capture import read_capture

    out: list[bytes] = []
    for f in sorted((ROOT / "tests" / "data").glob("kamailio_*")):
        for d in read_capture(f.read_bytes()):
            out.append(d.payload)
            try:
                out.append(hep.decode(d.payload).payload)
            except hep.HepError:
                pass
    return out


def _mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(6)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[pos % len(buf)] = rng.randrange(256)
        elif op == 1:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 2 and buf:
            del buf[pos : pos + rng.randint(1, 64)]
        elif op == 3:
            other = rng.choice(pool)
            a = rng.randrange(len(other) + 1)
            buf[pos:pos] = other[a : a + rng.randint(1, 200)]
        elif op == 4:
            buf[pos:pos] = rng.choice([b"\r\n", b"\n", b" ", b":", b";tag=", b"\x00", b"HEP3",
                                       b"\r\n\r\n", b"Content-Length: 99999\r\n", b"\n\t"])
        else:
            buf = buf[: pos]
    return bytes(buf)


def run(target: Callable[[bytes], None]) -> None:
    """Fuzz `target(data)`; it must raise nothing but the errors it documents."""
    try:
        import atheris  # type: ignore[import-not-found]
    except ImportError:
        atheris = None
    if atheris is not None:
        atheris.Setup(sys.argv, target)
        atheris.Fuzz()
        return
    runs = 100_000
    for arg in sys.argv[1:]:
        if arg.startswith("-runs="):
            runs = int(arg.split("=", 1)[1])
    pool = seeds() or [b""]
    rng = random.Random(1234)
    print(f"atheris not installed: {runs} random mutations of {len(pool)} seeds")
    for i in range(runs):
        data = _mutate(rng, rng.choice(pool), pool)
        try:
            target(data)
        except Exception:
            traceback.print_exc()
            print(f"run {i}: crashing input ({len(data)} bytes): {data!r}")
            raise SystemExit(1) from None
    print(f"{runs} runs, no crash")
