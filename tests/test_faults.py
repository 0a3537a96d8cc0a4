"""Faults a user meets, injected one at a time: each ends in one line (non-zero exit) or a correct
recovery, never a traceback, and nothing finished is lost or corrupted.

Tiny random models through the real command line (``llmc.__main__.main`` in-process, or a subprocess where
a signal must kill the process).
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llmc.errors import UserError
from llmc.results import effective_status, read_result, this_process

ROOT = Path(__file__).resolve().parents[1]


def one_line(capsys, code, expected_code=2) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and " WARNING " not in line
           and " INFO " not in line]
    assert code == expected_code and len(err) == 1, (code, err)
    assert "Traceback" not in err[0]
    return err[0]


def write_cfg(tmp_path, model, quant="", evals="eval: {name: [wikitext2], eval_pos: [pretrain], limit: 2, seq_len: 64}",
              save=None, name="run") -> str:
    save = save or f"save: {{save_path: {tmp_path / 'results'}}}"
    cfg = tmp_path / f"{name}.yml"
    cfg.write_text(f"model: {{path: {model}, torch_dtype: float32, device: cpu}}\n{quant}\n{evals}\n{save}\n")
    return str(cfg)


RTN = "quant: {method: RTN, weight: {bit: 8, granularity: per_channel}, act: {bit: 8, granularity: per_token}}"


# ------------------------------------------------------------------------------ the model cache
def _fake_entry(cache: Path, gguf: Path, sha: str):
    from safetensors.torch import save_file

    from llmc.models.loading import gguf_cache_dir, write_manifest
    d = gguf_cache_dir(sha)
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    save_file({"w": torch.arange(1000, dtype=torch.float32)}, str(d / "model.safetensors"))
    write_manifest(d)
    st = gguf.stat()
    (d / "slmquant_source.json").write_text(json.dumps({"file": str(gguf), "sha256": sha, "size": st.st_size,
                                                         "mtime": st.st_mtime}))
    return d


def test_a_damaged_model_cache_is_rebuilt_with_one_warning(tmp_path, monkeypatch, caplog):
    from llmc.models import loading
    from llmc.utils import sha256_file
    monkeypatch.setenv("SLMQUANT_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(100))
    sha = sha256_file(gguf)
    entry = _fake_entry(tmp_path / "cache", gguf, sha)
    rebuilt = []

    def fake_dequantize(path, out):
        rebuilt.append(path)
        (out / "config.json").write_text("{}")
        from safetensors.torch import save_file
        save_file({"w": torch.zeros(3)}, str(out / "model.safetensors"))
    monkeypatch.setattr(loading, "dequantize_gguf", fake_dequantize)
    assert loading.materialize_gguf(gguf, sha) == (entry, sha) and not rebuilt      # whole: served as it is
    with open(entry / "model.safetensors", "r+b") as f:                            # truncated by a crash
        f.truncate(2000)
    with caplog.at_level("WARNING"):
        assert loading.materialize_gguf(gguf, sha) == (entry, sha)
    assert rebuilt == [gguf]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "damaged" in warnings[0] and "model.safetensors" in warnings[0]
    assert loading.cache_entry_damage(entry) is None


def test_a_damaged_source_is_refused_naming_what_to_reinstall(tmp_path, monkeypatch):
    from llmc.models.loading import materialize_gguf
    monkeypatch.setenv("SLMQUANT_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(UserError, match=r"sha256 .* reinstall it \(pip install --force-reinstall x==1\)$"):
        materialize_gguf(gguf, "0" * 64, reinstall="pip install --force-reinstall x==1")


def test_a_damaged_assembled_gguf_is_assembled_again(tmp_path, monkeypatch):
    from llmc.utils import sha256_file
    from llmc_slm import zoo
    monkeypatch.setenv("SLMQUANT_CACHE", str(tmp_path / "cache"))
    parts = []
    for i in range(2):
        p = tmp_path / f"part{i}.bin"
        p.write_bytes(bytes([i + 1]) * 100)
        parts.append(p)
    whole = tmp_path / "whole"
    whole.write_bytes(parts[0].read_bytes() + parts[1].read_bytes())
    model = zoo.PackagedGGUF("fake", (("a", "1", "x"), ("b", "1", "y")), sha256_file(whole), "", "", "reinstall")

    def locate(dist, version, rel):
        return parts[0] if dist == "a" else parts[1]
    out = zoo.gguf_file(model, locate=locate)
    with open(out, "r+b") as f:
        f.truncate(150)
    again = zoo.gguf_file(model, locate=locate)
    assert again == out and again.read_bytes() == whole.read_bytes()


# ------------------------------------------------------------------------------ what a run writes
def test_an_unwritable_results_folder_is_one_line_before_the_model_loads(tmp_path, capsys, monkeypatch):
    from llmc.__main__ import main
    from llmc.models import loading
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cfg = write_cfg(tmp_path, "smollm2-135m-random", save=f"save: {{save_path: {blocker / 'results'}}}")
    line = one_line(capsys, main(["--config", cfg]))
    assert line.startswith(f"error: save.save_path: cannot write to {blocker / 'results'}")


def test_a_calibration_far_larger_than_the_machine_is_refused_with_the_knob(tmp_path, capsys, monkeypatch):
    from llmc.__main__ import main
    from llmc.models import loading
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    cfg = write_cfg(tmp_path, "smollm2-135m-random",
                    quant="quant: {method: SmoothQuant, weight: {bit: 8}, act: {bit: 8, granularity: per_token}}\n"
                          "calib: {n_samples: 100000, seq_len: 2048, bs: 1}")
    line = one_line(capsys, main(["--config", cfg]))
    assert "GB (calibration activations:" in line and "lower calib.n_samples or calib.seq_len" in line
    assert not (tmp_path / "results" / "run.json").exists()


def test_more_calibration_windows_than_the_text_holds_are_refused(tmp_path):
    from llmc.data.calib import make_calibration

    class Tok:
        def __call__(self, text, return_tensors=None):
            return type("E", (), {"input_ids": torch.arange(len(text.split())).unsqueeze(0)})()
    with pytest.raises(UserError, match=r"calib.n_samples: 500 windows of 16 tokens is more than the 84 distinct"):
        make_calibration(Tok(), " ".join(["w"] * 100), {}, 500, 16, "wikitext2_gptq", 0)
    calib = make_calibration(Tok(), " ".join(["w"] * 100), {}, 20, 16, "wikitext2_gptq", 0)
    assert calib.info["overlap"] == 3.2          # recorded: 20 x 16 tokens drawn from 100


def test_the_long_default_spinquant_run_is_announced_on_a_cpu(tmp_path, monkeypatch, caplog):
    """The mission's own example without --profile cpu: announced with an estimate and the CPU profile."""
    from llmc import estimate
    from llmc.config import load_config
    from llmc.pipeline import plan_run
    monkeypatch.setattr(estimate, "probe_layer_seconds", lambda *a, **k: 20e-6)   # a fast CPU's figure
    cfg = load_config(ROOT / "configs/smollm/spin_w4a8.yml", ["--save.save_path", str(tmp_path)])
    with caplog.at_level("WARNING"):
        est = estimate.check_resources(cfg, plan_run(cfg))
    assert est["quant_seconds"] > estimate.LONG_SECONDS
    assert any("--profile cpu" in r.getMessage() and "estimated quantization time" in r.getMessage()
               for r in caplog.records)
    cpu = load_config(ROOT / "configs/smollm/spin_w4a8.yml", ["--save.save_path", str(tmp_path)], profile="cpu")
    assert estimate.check_resources(cpu, plan_run(cpu))["quant_seconds"] < est["quant_seconds"] / 10


# ------------------------------------------------------------------------------ runs stopped from outside
def test_a_record_whose_writer_is_gone_reads_as_killed(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    gone = dict(this_process(), pid=proc.pid)
    data = {"schema_version": 1, "status": "running", "stage": "quantize: transform", "process": gone,
            "config": {}, "metrics": {"pretrain": {"wikitext2": {"ppl": 20.0, "windows": 2}}}}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    assert effective_status(data) == "killed"
    result = read_result(path)
    assert result.status == "killed" and "quantize: transform" in result.error
    assert result.at("pretrain")["wikitext2"].ppl == 20.0                 # what was finished is still there
    assert effective_status(dict(data, process=this_process())) == "running"   # a live writer: running
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])             # exited, not yet reaped
    deadline = time.time() + 30
    while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z" and time.time() < deadline:
        time.sleep(0.05)
    writer = {"host": platform.node(), "pid": zombie.pid}
    assert effective_status(dict(data, process=writer)) == "killed"      # a zombie writes no more: killed
    zombie.wait()


def test_a_run_killed_with_sigkill_is_recognised_and_rerun(tmp_path, tiny_model_dir):
    cfg = write_cfg(tmp_path, tiny_model_dir, quant=RTN,
                    evals="eval: {name: [wikitext2], eval_pos: [pretrain, fake_quant], limit: 40, seq_len: 256}")
    out = tmp_path / "results" / "run.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    proc = subprocess.Popen([sys.executable, "-m", "llmc", "--config", cfg, "--quiet"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if out.exists() and "evaluate" in (json.loads(out.read_text()).get("stage") or ""):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    result = read_result(out)
    assert result.status == "killed" and "evaluate" in result.error
    rerun = subprocess.run([sys.executable, "-m", "llmc", "--config", cfg], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "was killed during stage" in rerun.stderr
    assert read_result(out).status == "complete"


def _interrupt_in(monkeypatch, cls, method: str, after: int):
    """Raise KeyboardInterrupt (Ctrl-C) on the ``after``-th call of ``cls.method``."""
    original = getattr(cls, method)
    calls = {"n": 0}

    def patched(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == after:
            raise KeyboardInterrupt
        return original(self, *a, **k)
    monkeypatch.setattr(cls, method, patched)


@pytest.mark.parametrize("method,quant", [
    ("GPTQ", "quant: {method: GPTQ, weight: {bit: 4, granularity: per_channel}, act: {bit: 8, granularity: "
             "per_token}}\ncalib: {n_samples: 4, seq_len: 64, bs: 2}"),
    ("OmniQuant", "quant: {method: OmniQuant, weight: {bit: 4, symmetric: false, granularity: per_channel}, "
                  "act: {bit: 8, granularity: per_token}, special: {epochs: 3}}\ncalib: {n_samples: 4, seq_len: 64, bs: 1}"),
])
def test_ctrl_c_during_quantization_keeps_the_finished_evaluation(method, quant, tmp_path, tiny_model_dir, capsys,
                                                                 monkeypatch):
    from llmc.__main__ import main
    if method == "GPTQ":
        from llmc.algos.gptq import GPTQ
        _interrupt_in(monkeypatch, GPTQ, "gptq_block", 2)            # in the second block
    else:
        from llmc.algos.omniquant import OmniQuant
        _interrupt_in(monkeypatch, OmniQuant, "_loss", 10)            # inside the first block's training
    cfg = write_cfg(tmp_path, tiny_model_dir, quant=quant,
                    evals="eval: {name: [wikitext2], eval_pos: [pretrain, fake_quant], limit: 2, seq_len: 64}")
    code = main(["--config", cfg, "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and err == ["interrupted"]
    result = read_result(tmp_path / "results" / "run.json")
    assert result.status == "interrupted" and "quantize: transform" in result.error
    assert result.at("pretrain")["wikitext2"].ppl > 0                  # the finished evaluation is kept


def test_disk_full_while_writing_a_checkpoint_is_one_line_and_keeps_the_record(tmp_path, tiny_model_dir, capsys,
                                                                              monkeypatch):
    import errno

    from llmc.__main__ import main
    from llmc.export import packed

    def full(self, adapter, quantized, cfg, stage):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.target(cfg, stage)))
    monkeypatch.setattr(packed.PackedExporter, "export", full)
    cfg = write_cfg(tmp_path, tiny_model_dir, quant=RTN,
                    evals="eval: {name: [wikitext2], eval_pos: [pretrain, fake_quant], limit: 2, seq_len: 64}",
                    save=f"save: {{save_path: {tmp_path / 'results'}, save_real: true}}")
    line = one_line(capsys, main(["--config", cfg, "--quiet"]), expected_code=1)
    assert line.startswith("error: No space left on device:") and "run_real_quant" in line
    result = read_result(tmp_path / "results" / "run.json")
    assert result.status == "failed" and "No space left" in result.error
    assert set(result.metrics) == {"pretrain", "fake_quant"}             # both finished evaluations kept


def test_a_corrupted_packed_checkpoint_is_one_line_in_the_profiler_and_the_loader(tmp_path, tiny_model_dir):
    from llmc.config import load_config
    from llmc.deploy import load_deployed
    from llmc.models.loading import load_model, resolve_model_source
    from llmc.pipeline import quantize_model
    from llmc.quant.packed import save_packed_model
    adapter = load_model(resolve_model_source(str(tiny_model_dir)), dtype=torch.float32)
    cfg = load_config(write_cfg(tmp_path, tiny_model_dir, quant=RTN))
    quantize_model(adapter, cfg)
    ckpt = tmp_path / "packed"
    save_packed_model(adapter, cfg, ckpt)
    size = (ckpt / "model.safetensors").stat().st_size
    with open(ckpt / "model.safetensors", "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(UserError, match="the packed checkpoint is damaged"):
        load_deployed(ckpt)
    proc = subprocess.run([sys.executable, "-m", "llmc_slm.tracks.inference", "--checkpoint", str(ckpt), "--runs", "1",
                           "--warmup", "0", "--no-macs"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "the packed checkpoint is damaged" in lines[0], proc.stderr


def test_a_data_file_gone_in_the_middle_of_a_sweep_fails_that_run_only(tmp_path, tiny_model_dir):
    """The sweep's second run finds its data gone: recorded failed with the one-line reason, the first
    run's results untouched, exit status 1."""
    import shutil
    data = tmp_path / "data"
    shutil.copytree(ROOT.parent / "shared" / "data" / "wikitext2", data / "wikitext2")
    configs = tmp_path / "configs" / "tiny"
    configs.mkdir(parents=True)
    (configs / "fp16.yml").write_text(f"model: {{path: {tiny_model_dir}, torch_dtype: float32}}\n"
                                      f"eval: {{name: [wikitext2], limit: 1, seq_len: 64, path: {data}}}\n")
    (configs / "rtn_w8a8.yml").write_text(f"model: {{path: {tiny_model_dir}, torch_dtype: float32}}\n{RTN}\n"
                                          f"eval: {{name: [wikitext2], limit: 1, seq_len: 64, path: {data}}}\n")
    wrapper = tmp_path / "engine.py"   # the real engine, which removes the data once the first run is done
    wrapper.write_text(
        "import os, shutil, sys, runpy\n"
        f"if 'rtn' in ' '.join(sys.argv): shutil.rmtree({str(data)!r}, ignore_errors=True)\n"
        "sys.argv = ['llmc'] + sys.argv[1:]\nrunpy.run_module('llmc', run_name='__main__')\n")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "sweep.py"), "--models", "tiny", "--methods", "rtn",
                           "--bits", "w8a8", "--configs", str(tmp_path / "configs"), "--results",
                           str(tmp_path / "results"), "--engine-cmd", f"{sys.executable} {wrapper}", "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 1, proc.stderr[-2000:]
    first = read_result(tmp_path / "results" / "tiny" / "fp16.json")
    second = read_result(tmp_path / "results" / "tiny" / "rtn_w8a8.json")
    assert first.status == "complete" and first.at("pretrain")["wikitext2"].ppl > 0
    assert second.status == "failed" and "eval.path" in (second.error or "")
