"""JSONL files: reading with errors that name file and line, atomic writes, resumable append-only logs."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


class RecordError(ValueError):
    """A bad record in a data file; the message names the file, the line (0: the whole file) and the field."""

    def __init__(self, path: str | os.PathLike, line: int, message: str):
        self.path, self.line = str(path), line
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")


def bad_records_error(path, bad: list[tuple[int, object, str]]) -> RecordError:
    """One error for every bad row of a file: the first named in full, the others counted."""
    line, record_id, problem = bad[0]
    more = (f" ({len(bad) - 1} more bad records, at lines {', '.join(str(b[0]) for b in bad[1:6])}"
            f"{', ...' if len(bad) > 6 else ''})") if len(bad) > 1 else ""
    return RecordError(path, line, f"record {record_id!r}: {problem}{more}")


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(line_number, object)` for each non-blank line.

    Raises:
        FileNotFoundError: no such file.
        RecordError: the path is a directory, a line is not UTF-8, not JSON, or not a JSON object.
    """
    if os.path.isdir(path):
        raise RecordError(path, 0, "is a directory, not a JSONL file")
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                bad = raw[err.start:err.start + 1]
                raise RecordError(path, number, f"not UTF-8 text (byte {err.start} is {bad!r})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise RecordError(path, number, f"invalid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(obj, dict):
                raise RecordError(path, number, f"expected a JSON object, got {type(obj).__name__}")
            yield number, obj


def _umask() -> int:
    """The process umask, read without changing it (Linux), else the usual 0o022."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        return 0o022


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
    """Write all records to `path` atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it 0600; the file gets what open() would give it
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return count


def load_done(path: str | os.PathLike, key: str = "id") -> dict[Any, dict[str, Any]]:
    """Records already appended to a log, by `key` (a later record with the same key wins).

    A torn last line (a process killed mid-write) is cut off the file first, so appending can
    go on after it.

    Raises:
        RecordError: a line that is not a JSON object or has no `key` (the file cannot be resumed).
    """
    path = Path(path)
    if not path.exists():
        return {}
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    done = {}
    try:
        for _, record in read_jsonl(path):
            done[record[key]] = record
    except (RecordError, KeyError) as err:
        raise RecordError(path, 0, f"cannot resume from this output file ({err}); move it away to start over") from err
    return done
