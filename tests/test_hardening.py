"""Resume and pipeline state as a new user breaks them: cut-short checkpoints, error records, bad
counts, a directory or non-UTF-8 bytes for a data file, the umask."""
import json
import os
import stat

import pytest

from autothink.cli import main
from autothink.data.runner import run_records
from autothink.records.jsonl import RecordError, read_jsonl, write_jsonl
from autothink.training.args import resume_point


def test_a_checkpoint_cut_short_is_skipped_for_the_last_complete_one(tmp_path, caplog):
    for step, files in ((5, ("config.json", "model.safetensors", "trainer_state.json")), (10, ("config.json",))):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        for name in files:
            (folder / name).write_text("{}")
    assert resume_point("auto", str(tmp_path)) == str(tmp_path / "checkpoint-5")
    assert resume_point("last", str(tmp_path)) == str(tmp_path / "checkpoint-5")
    assert "checkpoint-10" in caplog.text
    (tmp_path / "checkpoint-5" / "trainer_state.json").unlink()
    assert resume_point(None, str(tmp_path)) is None  # nothing complete: a fresh run
    with pytest.raises(ValueError, match="no complete checkpoint"):
        resume_point("last", str(tmp_path))
    assert resume_point("no", str(tmp_path)) is None


def test_an_error_record_is_retried_never_final(tmp_path):
    out = tmp_path / "out.jsonl"
    calls = []

    def flaky(record):
        calls.append(record["id"])
        if len(calls) == 2:
            raise ConnectionError("down")
        return {"id": record["id"], "status": "kept"}

    records = [{"id": "a"}, {"id": "b"}, {"id": "c"}]
    assert [r["status"] for r in run_records(records, flaky, out)] == ["kept", "error", "kept"]
    assert [r["status"] for r in run_records(records, flaky, out)] == ["kept", "kept", "kept"]
    assert calls == ["a", "b", "c", "b"]  # only the error record ran again


@pytest.mark.parametrize("argv, message", [
    (["data", "tag", "--input", "arithmetic", "--n", "-1"], "TagConfig.n must be an integer >= 1"),
    (["data", "tag", "--input", "arithmetic", "--n", "0"], "TagConfig.n must be an integer >= 1"),
    (["tasks", "export", "arithmetic", "--n", "-5", "-o", "x.jsonl"], "ExportConfig.n must be an integer >= 1"),
    (["data", "coldstart", "--samples", "0"], "ColdstartConfig.samples must be an integer >= 1"),
    (["data", "coldstart", "--directive_fraction", "2"], "ColdstartConfig.directive_fraction must be in"),
    (["data", "synth", "--k", "0"], "SynthConfig.k must be an integer >= 1"),
])
def test_bad_counts_are_refused_before_any_work(argv, message, capsys, tmp_path):
    assert main([*argv, "--output_dir", str(tmp_path)] if argv[0] == "data" else argv) == 2
    assert message in capsys.readouterr().err


def test_a_directory_or_bytes_that_are_not_utf8_are_named(tmp_path):
    with pytest.raises(RecordError, match=rf"^{tmp_path}: is a directory, not a JSONL file$"):
        list(read_jsonl(tmp_path))
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"id": "a"}\n{"id": "\xff\xfe"}\n')
    with pytest.raises(RecordError, match=rf"{bad}:2: not UTF-8 text \(byte 8 is b'.xff'\)"):
        list(read_jsonl(bad))


def test_written_files_honour_the_umask(tmp_path):
    before = os.umask(0o027)
    try:
        path = tmp_path / "out.jsonl"
        write_jsonl(path, [{"id": "a"}])
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        os.umask(0o022)
        write_jsonl(path, [{"id": "a"}])
        assert stat.S_IMODE(path.stat().st_mode) == 0o644 and json.loads(path.read_text()) == {"id": "a"}
    finally:
        os.umask(before)
