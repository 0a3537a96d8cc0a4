"""The run record: atomic, readable, and honest about how a run ended."""

import json

from llmc.results import RunRecord


def test_atomic_writes_are_readable_by_others(tmp_path):
    import os
    import stat
    from llmc.utils import atomic_write_json
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o644
    assert not list(tmp_path.glob(".*.tmp"))


def test_run_record_status_lifecycle(tmp_path):
    rec = RunRecord.start(tmp_path / "run.json", task_id="t")
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "running"
    rec.set_metric("pretrain", "wikitext2", {"ppl": 21.6})
    rec.finish("failed", "boom")
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["status"] == "failed" and data["error"] == "boom"
    assert data["metrics"]["pretrain"]["wikitext2"]["ppl"] == 21.6 and "finished" in data
