"""Resuming a run after its quantization (``llmc.resume``): every shipped method's quantized model comes back
from its checkpoint with the same logits; a run interrupted (Ctrl-C, SIGKILL) in its evaluations resumes
without quantizing again and ends with the figures of a run that was never interrupted; a checkpoint that
does not fit (another config, edited code, a wrong model) is never used."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import calib_ids, logits, tiny_adapter
from llmc import resume
from llmc.config import load_config
from llmc.results import read_items, read_result

ROOT = Path(__file__).resolve().parents[1]
QUANTIZED_CONFIGS = sorted(p.name for p in (ROOT / "configs/smollm").glob("*.yml") if not p.name.startswith("fp16"))
# the shipped configs shrunk to a tiny model: a few calibration windows, one epoch or two steps of learning
SHRINK = {"OmniQuant": ["--quant.special.epochs", "1", "--calib.bs", "1"],
          "SpinQuant": ["--quant.special.steps", "2", "--quant.special.gptq_samples", "4"]}


def tiny_cfg(name: str, folder: Path):
    method = load_config(ROOT / "configs/smollm" / name).quant.method
    return load_config(ROOT / "configs/smollm" / name, [
        "--calib.n_samples", "4", "--calib.seq_len", "16", "--calib.bs", "2", *SHRINK.get(method, []),
        "--save.save_path", str(folder), "--save.save_trans", "false", "--save.save_fake", "false",
        "--save.save_real", "false", "--save.formats", "[]"])


@pytest.mark.parametrize("name", QUANTIZED_CONFIGS)
def test_every_shipped_method_comes_back_from_its_checkpoint_with_the_same_logits(name, tmp_path):
    from llmc.pipeline import quantize_stages
    adapter = tiny_adapter("llama")
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(3))
    path = tmp_path / "run.resume.pt"
    written = {}

    def checkpoint(adapter, quantized):
        assert resume.write_checkpoint(path, "fp", adapter, quantized) is None     # it pickles
        written["logits"] = logits(adapter, ids)
    cfg = tiny_cfg(name, tmp_path)
    quantize_stages(adapter, cfg, calib_ids(), checkpoint=checkpoint)

    model_bytes = sum(t.numel() * t.element_size() for t in [*adapter.model.parameters(), *adapter.model.buffers()])
    assert path.stat().st_size < 3 * model_bytes + 2**20      # the model, not the method's calibration state
    fresh = tiny_adapter("llama")                     # the float model a resumed run loads first
    found = resume.Resumable(path, "fp", {}, "killed")
    quantized = resume.load_checkpoint(found, fresh)
    assert torch.equal(logits(fresh, ids), written["logits"])                       # bit for bit
    assert quantized["label"] and quantized["cost"]["time_s"] > 0
    # and the integer checkpoint (save_real, Track 2) written from it is the one the first attempt writes
    from llmc.quant.packed import read_packed, save_packed_model
    save_packed_model(adapter, cfg, tmp_path / "first")
    save_packed_model(fresh, cfg, tmp_path / "resumed")
    (a, meta_a), (b, meta_b) = read_packed(tmp_path / "first"), read_packed(tmp_path / "resumed")
    assert meta_a == meta_b and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if "kv4" in name:   # the KV-cache quantizer is part of what comes back
        attn = fresh.blocks[0].self_attn
        assert attn.k_quantizer is not None and fresh.model.config._attn_implementation == "llmc_kvquant"


def test_a_checkpoint_holding_another_model_is_refused(tmp_path):
    from llmc.pipeline import quantize_stages
    path = tmp_path / "run.resume.pt"
    quantize_stages(tiny_adapter("llama"), tiny_cfg("rtn_w8a8.yml", tmp_path), None,
                    checkpoint=lambda a, q: resume.write_checkpoint(path, "fp", a, q))
    payload = torch.load(path, weights_only=False)
    with torch.no_grad():
        payload["model"].model.layers[0].mlp.down_proj.weight.mul_(3)             # not what was recorded
    torch.save(payload, path)
    with pytest.raises(ValueError, match="logits differ"):
        resume.load_checkpoint(resume.Resumable(path, "fp", {}, "killed"), tiny_adapter("llama"))
    with pytest.raises(ValueError, match="fingerprint"):
        resume.load_checkpoint(resume.Resumable(path, "another", {}, "killed"), tiny_adapter("llama"))
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="unreadable"):
        resume.load_checkpoint(resume.Resumable(path, "fp", {}, "killed"), tiny_adapter("llama"))


# ------------------------------------------------------------------------------ through the command line
GPTQ = ("quant: {method: GPTQ, weight: {bit: 4, granularity: per_channel}, act: {bit: 8, granularity: per_token}}\n"
        "calib: {n_samples: 4, seq_len: 64, bs: 2}")
EVALS = "eval: {name: [wikitext2, piqa], eval_pos: [fake_quant], limit: 6, seq_len: 64}"


def write_cfg(tmp_path, model, folder="results", extra="") -> str:
    cfg = tmp_path / "run.yml"
    cfg.write_text(f"model: {{path: {model}, torch_dtype: float32, device: cpu}}\n{GPTQ}\n{EVALS}\n"
                   f"save: {{save_path: {tmp_path / folder}{extra}}}\n")
    return str(cfg)


def interrupt_piqa_once(monkeypatch):
    """Ctrl-C when the second evaluation (PIQA) starts."""
    from llmc_slm.harness import HarnessTask
    original = HarnessTask.run

    def run(self, *a, **k):
        if self.name == "piqa":
            monkeypatch.setattr(HarnessTask, "run", original)
            raise KeyboardInterrupt
        return original(self, *a, **k)
    monkeypatch.setattr(HarnessTask, "run", run)


def quantizing_fails(monkeypatch):
    from llmc.algos.gptq import GPTQ
    monkeypatch.setattr(GPTQ, "quantize", lambda self, calib: pytest.fail("quantized again"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir):
    """The same run, never interrupted: the figures a resumed run must reproduce."""
    from llmc.__main__ import main
    tmp = tmp_path_factory.mktemp("uninterrupted")
    assert main(["--config", write_cfg(tmp, tiny_model_dir), "--quiet"]) == 0
    out = tmp / "results" / "run.json"
    assert not resume.checkpoint_path(out).exists()             # deleted when the run completes
    return read_result(out), read_items(out.with_name("run.items.json.gz"))


def test_ctrl_c_in_the_evaluations_resumes_after_quantization_with_the_same_figures(
        tmp_path, tiny_model_dir, uninterrupted, monkeypatch, caplog):
    from llmc.__main__ import main
    cfg = write_cfg(tmp_path, tiny_model_dir)
    out = tmp_path / "results" / "run.json"
    interrupt_piqa_once(monkeypatch)
    assert main(["--config", cfg, "--quiet"]) == 130
    first = read_result(out)
    assert first.status == "interrupted" and set(first.at("fake_quant")) == {"wikitext2"}
    assert resume.checkpoint_path(out).exists() and first.sections["resume_checkpoint"]["bytes"] > 0

    quantizing_fails(monkeypatch)
    with caplog.at_level("INFO", logger="llmc"):
        assert main(["--config", cfg]) == 0
    assert "resuming run.json from its quantized model" in caplog.text
    assert "wikitext2 at fake_quant: kept from the interrupted attempt" in caplog.text
    done, expected = read_result(out), uninterrupted[0]
    assert done.status == "complete" and not resume.checkpoint_path(out).exists()
    for name in ("wikitext2", "piqa"):                                # the figures of the uninterrupted run
        a, b = done.at("fake_quant")[name], expected.at("fake_quant")[name]
        assert (a.ppl, a.acc, a.acc_norm, a.n) == (b.ppl, b.acc, b.acc_norm, b.n), name
    assert read_items(out.with_name("run.items.json.gz")) == uninterrupted[1]     # item by item
    assert done.quant_cost.time_s == first.quant_cost.time_s            # Track 3: the attempt that quantized
    assert done.calibration == first.calibration and done.method.label == "GPTQ"
    [attempt] = done.sections["resumed"]
    assert attempt["from_status"] == "interrupted" and attempt["kept"] == ["fake_quant/wikitext2"]
    stages = done.timings["stages"]          # both attempts' time: the quantization counted once, where it ran
    assert stages["quantize"] == pytest.approx(first.timings["stages"]["quantize"], rel=1e-9)
    assert stages["load"] > first.timings["stages"]["load"] and stages["resume"] > 0


def _quantized_again(tmp_path, tiny_model_dir, monkeypatch, caplog, change) -> str:
    """Interrupt a run in its evaluations, apply ``change`` (returns the config to rerun), rerun; the log."""
    from llmc.__main__ import main
    out = tmp_path / "results" / "run.json"
    interrupt_piqa_once(monkeypatch)
    assert main(["--config", write_cfg(tmp_path, tiny_model_dir), "--quiet"]) == 130
    assert resume.checkpoint_path(out).exists()
    cfg = change()
    with caplog.at_level("INFO", logger="llmc"):
        assert main(["--config", cfg]) == 0
    done = read_result(out)
    assert done.status == "complete" and "resumed" not in done.sections and done.quant_cost.time_s > 0
    assert not resume.checkpoint_path(out).exists()
    return caplog.text


def test_a_checkpoint_of_another_config_is_deleted_and_the_run_quantizes_again(tmp_path, tiny_model_dir,
                                                                                monkeypatch, caplog):
    def change_bits():
        cfg = tmp_path / "run.yml"
        cfg.write_text(cfg.read_text().replace("bit: 4", "bit: 3"))
        return str(cfg)
    log = _quantized_again(tmp_path, tiny_model_dir, monkeypatch, caplog, change_bits)
    assert "not resuming from run.resume.pt (config, code, model or environment differ" in log


def test_edited_code_invalidates_a_checkpoint(tmp_path, tiny_model_dir, monkeypatch, caplog):
    def edit():
        monkeypatch.setattr(resume, "source_digest", lambda: "another diff")
        return str(tmp_path / "run.yml")
    log = _quantized_again(tmp_path, tiny_model_dir, monkeypatch, caplog, edit)
    assert "not resuming from run.resume.pt (config, code, model or environment differ" in log


def test_no_checkpoint_without_save_resume(tmp_path, tiny_model_dir, monkeypatch):
    from llmc.__main__ import main
    interrupt_piqa_once(monkeypatch)
    assert main(["--config", write_cfg(tmp_path, tiny_model_dir, extra=", resume: false"), "--quiet"]) == 130
    out = tmp_path / "results" / "run.json"
    assert not resume.checkpoint_path(out).exists() and "resume_checkpoint" not in read_result(out).sections


def test_a_rerun_without_save_resume_deletes_the_earlier_checkpoint(tmp_path, tiny_model_dir, monkeypatch, caplog):
    """The record that named it is replaced: kept, the file would only hold disk until a later resumable run."""
    from llmc.__main__ import main
    out = tmp_path / "results" / "run.json"
    interrupt_piqa_once(monkeypatch)
    assert main(["--config", write_cfg(tmp_path, tiny_model_dir), "--quiet"]) == 130
    assert resume.checkpoint_path(out).exists()
    interrupt_piqa_once(monkeypatch)
    with caplog.at_level("INFO", logger="llmc"):
        assert main(["--config", write_cfg(tmp_path, tiny_model_dir, extra=", resume: false"), "--quiet"]) == 130
    assert "not resuming from run.resume.pt (save.resume is off): deleted" in caplog.text
    assert not resume.checkpoint_path(out).exists() and "resume_checkpoint" not in read_result(out).sections


def test_a_run_killed_in_its_evaluations_resumes_from_its_checkpoint(tmp_path, tiny_model_dir, uninterrupted):
    """SIGKILL (a machine taken back, out of memory): the record stays 'running', its writer is gone."""
    cfg = write_cfg(tmp_path, tiny_model_dir)
    out = tmp_path / "results" / "run.json"
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), TQDM_DISABLE="1")
    proc = subprocess.Popen([sys.executable, "-m", "llmc", "--config", cfg, "--quiet"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and "piqa at fake_quant" in (json.loads(out.read_text()).get("stage") or ""):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read_result(out).status == "killed"
    partial = out.parent / ".run.resume.pt.abc123.tmp"      # as a kill during the checkpoint's write leaves it
    partial.write_bytes(b"half a model")
    rerun = subprocess.run([sys.executable, "-m", "llmc", "--config", cfg], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    done = read_result(out)
    assert done.status == "complete" and done.sections["resumed"][0]["from_status"] == "killed"
    assert not partial.exists()
    assert done.at("fake_quant")["wikitext2"].ppl == uninterrupted[0].at("fake_quant")["wikitext2"].ppl
    assert done.at("fake_quant")["piqa"].acc == uninterrupted[0].at("fake_quant")["piqa"].acc


def test_the_sweep_does_not_rerun_complete_runs_recorded_before_save_resume_existed():
    from llmc_slm.sweep import same_config
    new = {"save": {"save_path": "r", "resume": True}, "eval": {"limit": 5}}
    assert same_config({"save": {"save_path": "r"}, "eval": {"limit": 5}}, new)
    assert not same_config({"save": {"save_path": "r"}, "eval": {"limit": 6}}, new)
