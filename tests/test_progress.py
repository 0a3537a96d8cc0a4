"""A run's long loops tell its record where they stand (``llmc.progress``), so that a run without a terminal
(``--quiet``, a sweep's child) can be watched: throttled, cleared when the next stage starts, gone at the end."""

import json

from llmc import progress
from llmc.results import RunRecord


def test_a_bar_tells_the_listener_its_start_its_end_and_at_most_one_step_per_interval(monkeypatch):
    clock = iter([0.0, 5.0, 25.0, 30.0, 31.0])       # start, step 1, step 2, step 3, step 4 (the last)
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    heard = []
    with progress.listen(lambda what, done, total: heard.append((what, done, total)), min_interval=20):
        with progress.Bar(4, "blocks", disable=True) as bar:
            for _ in range(4):
                bar.update(1)
    assert heard == [("blocks", 0, 4), ("blocks", 2, 4), ("blocks", 4, 4)]


def test_bars_outside_a_listener_tell_nobody_and_track_counts_each_item_after_its_body():
    assert list(progress.track(range(3), "x", disable=True)) == [0, 1, 2]     # no listener: nothing to call
    heard = []
    with progress.listen(lambda *a: heard.append(a), min_interval=0):
        for i in progress.track(["a", "b"], "items", disable=True):
            assert heard[-1] == ("items", "ab".index(i), 2)
    assert heard[-1] == ("items", 2, 2)


def test_the_record_shows_its_stages_progress_until_the_next_stage_and_not_after_the_end(tmp_path):
    rec = RunRecord.start(tmp_path / "r.json")
    rec.stage("evaluate: wikitext2 at fake_quant")
    with progress.listen(rec.progress, min_interval=0):
        with progress.Bar(142, "wikitext2 ppl", disable=True) as bar:
            bar.update(41)
    on_disk = json.loads((tmp_path / "r.json").read_text())
    assert on_disk["stage"] == "evaluate: wikitext2 at fake_quant"
    assert {k: on_disk["progress"][k] for k in ("what", "done", "total")} == \
        {"what": "wikitext2 ppl", "done": 41, "total": 142}
    rec.stage("evaluate: piqa at fake_quant")
    assert "progress" not in json.loads((tmp_path / "r.json").read_text())
    rec.progress("requests", 10, 100)
    rec.finish("complete")
    assert "progress" not in json.loads((tmp_path / "r.json").read_text())


def test_a_quiet_run_records_its_blocks_windows_and_requests_in_the_stage_they_belong_to(tmp_path, tiny_model_dir,
                                                                                       monkeypatch):
    from llmc.__main__ import main
    seen = []
    original = RunRecord.progress

    def spy(self, what, done, total):
        seen.append((self.data["stage"], what, done, total))
        original(self, what, done, total)
    monkeypatch.setattr(RunRecord, "progress", spy)
    cfg = tmp_path / "run.yml"
    cfg.write_text(f"model: {{path: {tiny_model_dir}, torch_dtype: float32, device: cpu}}\n"
                   "quant: {method: GPTQ, weight: {bit: 4, granularity: per_channel}, "
                   "act: {bit: 8, granularity: per_token}}\ncalib: {n_samples: 4, seq_len: 64, bs: 2}\n"
                   "eval: {name: [wikitext2, piqa], eval_pos: [fake_quant], limit: 6, seq_len: 64}\n"
                   f"save: {{save_path: {tmp_path / 'results'}}}\n")
    assert main(["--config", str(cfg), "--quiet"]) == 0
    ends = {(stage, what): (done, total) for stage, what, done, total in seen if done == total}
    assert ends[("quantize: transform", "GPTQ blocks")] == (2, 2)    # the tiny model's two blocks
    windows = [v for (stage, what), v in ends.items() if stage == "evaluate: wikitext2 at fake_quant"]
    assert len(windows) == 1 and windows[0][0] > 0
    requests = [v for (stage, what), v in ends.items() if stage == "evaluate: piqa at fake_quant"]
    assert requests == [(12, 12)]                      # 6 items x 2 choices
    starts = {(stage, what) for stage, what, done, _ in seen if done == 0}
    assert starts == set(ends)                         # every loop told its start as well as its end
    result = json.loads((tmp_path / "results" / "run.json").read_text())
    assert result["status"] == "complete" and "progress" not in result
