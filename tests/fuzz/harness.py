"""Shared runner for the fuzz targets: atheris when installed, else a stdlib mutation loop.

Run a target by hand from the repository root, e.g.

    /work/venv/bin/python tests/fuzz/fuzz_message.py            # until Ctrl-C (atheris)
    /work/venv/bin/python tests/fuzz/fuzz_message.py -runs=200000

With atheris (in the `test` extra: a manylinux wheel, no clang needed) the run is
coverage-guided over `sip`, `rating` and `ledger` (instrumented as the target imports them)
and takes the usual libFuzzer flags (`-runs=N`, `-max_total_time=S`, a corpus directory). Given no corpus
directory, it starts from a fresh one seeded with the recorded Kamailio captures (each datagram
and its SIP payload) and the malformed samples of `tests/corpus/`. Without atheris, the same
target is driven by random byte mutations of those seeds for `-runs=N` iterations (default
100000). Either way a crash prints the input that caused it and exits non-zero. These files are
not collected by pytest; `tests/integration/test_fuzz_targets.py` runs each one briefly.
"""

from __future__ import annotations

import random
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

try:
    import atheris  # type: ignore[import-not-found]
except ImportError:
    atheris = None

# The targets import this module first, then the code under test: instrument our packages as
# they are imported (instrument_all() on everything already loaded costs ~20 s per start).
_HOOK = atheris.instrument_imports(include=["sip", "rating", "ledger"]) if atheris else None
if _HOOK is not None:
    _HOOK.__enter__()


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
    for f in sorted((ROOT / "tests" / "corpus").glob("*.bin")):
        out.append(f.read_bytes())
    return out


def _corpus_dir(pool: list[bytes]) -> str:
    """A new directory holding one file per seed, for libFuzzer to start from."""
    d = tempfile.mkdtemp(prefix="vmgated-fuzz-")
    for i, data in enumerate(pool):
        Path(d, f"seed-{i:04d}").write_bytes(data)
    return d


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
    if atheris is not None and _HOOK is not None:
        _HOOK.__exit__(None, None, None)
        argv = list(sys.argv)
        if all(a.startswith("-") for a in argv[1:]):
            argv.append(_corpus_dir(seeds()))
        atheris.Setup(argv, target)
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
