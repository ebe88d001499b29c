"""The README's example tenant (`conf/vmgated.yaml`) as a socket-free pipeline, for tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sip.dialog import Tracker
from vmgated.config import load_config
from vmgated.metrics import Counters
from vmgated.pipeline import Billable, Pipeline, Runtime

ROOT = Path(__file__).resolve().parents[2]
DEMO_CDRS = ROOT / "conf" / "demo-cdrs.jsonl"


def example_pipeline(
    sink: Callable[[Billable, object], None] | None = None, counters: Counters | None = None
) -> Pipeline:
    """A pipeline on the example config whose finished calls go to `sink` (dropped if None)."""
    runtime = Runtime.build(load_config(ROOT / "conf" / "vmgated.yaml", env={}))
    return Pipeline(runtime, Tracker(), counters or Counters(),
                    sink or (lambda item, tx: None), lambda: 0)


def pipeline_failing_on(call_id: str) -> tuple[Pipeline, list[str], Counters]:
    """An example pipeline whose sink raises for one Call-ID (standing for a bug on the ledger
    side) and records the Call-IDs of the others in the returned list."""
    billed: list[str] = []

    def sink(item: Billable, tx: object) -> None:
        if item.record.call_id == call_id:
            raise RuntimeError("a bug on the ledger side")
        billed.append(item.record.call_id)

    counters = Counters()
    return example_pipeline(sink, counters), billed, counters
