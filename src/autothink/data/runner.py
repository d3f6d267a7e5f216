"""Resumable, concurrent record processing: the engine under every data stage.

Each stage maps input records to output records keyed by a stable id. Results are appended to
the output JSONL as they finish (one line, flushed), so a killed run loses at most the records
in flight. On restart, ids already in the file are skipped, a torn last line is cut off, and
the final file is rewritten in input order, so a resumed run's output equals an uninterrupted
one's (given per-record seeds, which the stages derive from the record id).
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Iterable

from tqdm import tqdm

from autothink.records.jsonl import load_done, write_jsonl


def record_seed(*parts: Any) -> int:
    """A stable 31-bit seed from a record id and a role, the same on every run and machine."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def run_records(
    records: Iterable[dict],
    process: Callable[[dict], dict],
    output: str | os.PathLike,
    workers: int = 4,
    desc: str = "records",
) -> list[dict]:
    """Apply `process` to every record not yet in `output`; return all outputs in input order.

    `process` must return a JSON-serializable dict with the input's `id`. An exception in
    `process` does not stop the run: the record is written with `status: "error"` and the
    message, so it is reported, not dropped; the next run retries it.

    Args:
        records: input dicts, each with a unique string `id`.
        process: the per-record work (LLM calls, verification); called from worker threads.
        output: the JSONL file to append to and finally rewrite in input order.
        workers: records in flight at once (LLM backends bound their own concurrency too).
    """
    records = list(records)
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"duplicate record id {dup!r} in the input of {desc}")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    done = load_done(output)
    # An error is never final: the records that raised last time are retried.
    todo = [r for r in records if r["id"] not in done or done[r["id"]].get("status") == "error"]

    def safe(record: dict) -> dict:
        try:
            result = process(record)
        except Exception as err:  # reported per record, never silently dropped
            result = {"id": record["id"], "status": "error", "error": f"{type(err).__name__}: {err}"}
        if result.get("id") != record["id"]:
            raise ValueError(f"{desc}: process returned id {result.get('id')!r} for record {record['id']!r}")
        return result

    with open(output, "a", encoding="utf-8") as sink, ThreadPoolExecutor(max(1, workers)) as pool, tqdm(
        total=len(records), initial=len(records) - len(todo), desc=desc, unit="rec"
    ) as bar:
        pending, queue = set(), iter(todo)
        while True:
            while len(pending) < max(1, workers):  # bounded: never more than `workers` submitted
                record = next(queue, None)
                if record is None:
                    break
                pending.add(pool.submit(safe, record))
            if not pending:
                break
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                result = future.result()
                sink.write(json.dumps(result, ensure_ascii=False) + "\n")
                sink.flush()
                done[result["id"]] = result
                bar.update(1)
    ordered = [done[i] for i in ids]
    write_jsonl(output, ordered)
    return ordered
