"""tools/sweep.py: planning, skipping, resuming, failures, workers (on a fake engine: real runs are slow)."""

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
import yaml

from llmc.config import load_config
from llmc.errors import UserError
from llmc.config import config_as_dict as _config_dict
from llmc.paths import results_path
from llmc_slm import sweep as sw
from llmc_slm.executors import make_executor

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

FAKE_ENGINE = r'''
"""Mimics python -m llmc's contract: results JSON running -> complete | failed | interrupted."""
import json, os, platform, signal, sys, time
from pathlib import Path

HERE = Path(__file__).parent
result = Path(os.environ["SLMQUANT_SWEEP_RESULT"])
config = json.loads(os.environ["SLMQUANT_SWEEP_CONFIG"])
argv = sys.argv[1:]
assert "--config" in argv and "--save.save_path" in argv, argv
assert str(result.parent) == argv[argv.index("--save.save_path") + 1], argv
stem = result.stem
with open(HERE / "launches.txt", "a") as f:
    f.write(f"{stem} {os.environ.get('OMP_NUM_THREADS')} {os.getpid()} {os.getppid()}\n")
control = HERE / "control.json"
action = (json.loads(control.read_text()) if control.exists() else {}).get(stem, "")

def write(status, **extra):
    data = {"schema_version": 1, "status": status, "config": config, "config_file": argv[argv.index("--config") + 1],
            "metrics": {}, "timings": {}, "log": [], "process": {"host": platform.node(), "pid": os.getpid()},
            **extra}
    tmp = result.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, result)

def term(signum, frame):
    raise KeyboardInterrupt
signal.signal(signal.SIGTERM, term)
result.parent.mkdir(parents=True, exist_ok=True)
if action == "slow-start" or (action == "stage-killed-once" and (HERE / f"{stem}.once").exists()):
    time.sleep(1.0)                                      # a process that takes a while to write its first record
write("running")
try:
    if action.startswith("sleep"):
        time.sleep(float(action.split(":")[1]))
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    once = HERE / f"{stem}.once"
    if action.endswith("-once") and not once.exists():   # the first attempt only
        once.touch()
        if action == "kill-parent-once":                 # the worker that started this process dies
            os.kill(os.getppid(), signal.SIGKILL)
            time.sleep(60)
        if action == "stage-killed-once":                # killed right after saying where it is
            write("running", stage="evaluate: wikitext2")
        os.kill(os.getpid(), signal.SIGKILL)
    if action in ("stages", "slow-start", "stage-killed-once"):   # a run that says where it is, as the engine does
        write("running", stage="quantize: transform", progress={"what": "GPTQ blocks", "done": 3, "total": 30})
        time.sleep(1.5)
        write("running", stage="evaluate: piqa at fake_quant")
        time.sleep(1.5)
    if action == "fail":
        write("failed", error="RuntimeError: boom")
        print("RuntimeError: boom", file=sys.stderr)
        sys.exit(1)
    write("complete", metrics={"fake_quant": {"wikitext2": {"ppl": 20.5}}, "pretrain": {"wikitext2": {"ppl": 20.0}}})
except KeyboardInterrupt:
    write("interrupted", error="interrupted (Ctrl-C or SIGTERM)")
    sys.exit(130)
'''


@pytest.fixture
def fake(tmp_path):
    """A fake engine in tmp_path; returns helpers to control it and read its launch log."""
    script = tmp_path / "fake_engine.py"
    script.write_text(FAKE_ENGINE)

    class Fake:
        engine = [sys.executable, str(script)]
        results = tmp_path / "res"

        @staticmethod
        def control(**actions):
            (tmp_path / "control.json").write_text(json.dumps(actions))

        @staticmethod
        def launches() -> list[str]:
            p = tmp_path / "launches.txt"
            return [line.split()[0] for line in p.read_text().splitlines()] if p.exists() else []

        @staticmethod
        def launch_lines() -> list[str]:
            p = tmp_path / "launches.txt"
            return p.read_text().splitlines() if p.exists() else []

    return Fake


def make_runs(fake, methods=("rtn", "smooth"), bits=("w8a8",), **kw):
    return sw.plan(["smollm"], list(methods), list(bits), results=fake.results, configs_dir=CONFIGS,
                   profile="cpu", limit=3, engine=fake.engine, **kw)


def sweep_once(fake, retry_failed=False, workers=1, timeout=None, **kw):
    runs = make_runs(fake, **kw)
    s = sw.Sweep(runs, fake.results, workers=workers, timeout=timeout, retry_failed=retry_failed, quiet=True,
                 grace=5, out=lambda line: None)
    s.decide()
    return s.run(), runs


def status(path):
    return json.loads(Path(path).read_text())["status"]


# --------------------------------------------------------------------------------------------- plan
def test_plan_expands_the_grid_like_the_engine(tmp_path):
    res = tmp_path / "res"
    runs = sw.plan(["smollm"], ["RTN", "smooth", "OmniQuant"], ["w8a8", "w4a8"], results=res,
                   configs_dir=CONFIGS, profile="cpu", limit=100, eval_names=["wikitext2", "piqa"],
                   sets=["eval.bs=4"])
    names = [r.stem for r in runs]
    # the cpu profile has nothing for the baseline: it runs without it and its file name stays fp16.json
    assert names == ["fp16", "rtn_w8a8_cpu", "rtn_w4a8_cpu", "smooth_w8a8_cpu", "smooth_w4a8_cpu",
                     "omni_w8a8_cpu", "omni_w4a8_cpu"]
    for r in runs:
        base = r.method == "fp16"
        assert r.config == CONFIGS / "smollm" / (f"{r.method}_{r.bits}.yml" if not base else "fp16.yml")
        assert r.command[:3] == [sys.executable, "-m", "llmc"]
        assert ("--profile" in r.command) is (not base)
        overrides = ["--save.save_path", str(res / "smollm"), "--eval.limit", "100",
                     "--eval.name", "[wikitext2,piqa]",
                     "--eval.eval_pos", "[pretrain]" if base else "[fake_quant]", "--eval.bs", "4"]
        assert r.command[-len(overrides):] == overrides
        cfg = load_config(r.config, overrides, profile=None if base else "cpu")
        assert r.result == results_path(cfg)
        assert r.expected == json.loads(json.dumps(_config_dict(cfg)))
        assert r.log == res / "logs" / "smollm" / f"{r.stem}.log"
        assert cfg.eval.name == ["wikitext2", "piqa"] and cfg.eval.limit == 100 and cfg.eval.bs == 4
    omni = runs[-1]
    assert omni.expected["calib"]["n_samples"] == 32 and omni.expected["quant"]["special"]["epochs"] == 5

    inf = sw.plan(["smollm"], ["rtn"], ["w4a8"], results=res, configs_dir=CONFIGS, inference=True)
    assert "--save.save_real" not in inf[0].command and inf[1].expected["eval"]["inference"] is True

    with pytest.raises(UserError, match=r"configs/smollm/rtn_w2a8.yml"):
        sw.plan(["smollm"], ["rtn"], ["w2a8"], results=res, configs_dir=CONFIGS)
    assert not res.exists()


def test_missing_config_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "sweep.py"), "--methods", "rtn", "--bits",
                           "w3a8", "--results", str(tmp_path / "r"), "--configs", str(CONFIGS)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "rtn_w3a8.yml" in lines[0] and "Traceback" not in proc.stderr


def test_skip_missing_leaves_out_combinations_without_a_config(tmp_path, capsys):
    runs = sw.plan(["smollm"], ["awq", "quarot", "spin"], ["w4a16", "w4a8kv4"], results=tmp_path / "r",
                   configs_dir=CONFIGS, skip_missing=True)
    assert [r.name for r in runs] == [f"smollm/{n}" for n in ("fp16", "awq_w4a16", "quarot_w4a8kv4", "spin_w4a8kv4")]
    err = capsys.readouterr().err
    assert "skipped (no config)" in err and "quarot_w4a16.yml" in err and "awq_w4a8kv4.yml" in err
    with pytest.raises(UserError, match="--skip-missing"):
        sw.plan(["smollm"], ["awq", "quarot"], ["w4a16"], results=tmp_path / "r", configs_dir=CONFIGS)
    with pytest.raises(UserError, match="rtn_w3a8.yml"):          # nothing left to run: still an error
        sw.plan(["smollm"], ["rtn"], ["w3a8"], results=tmp_path / "r", configs_dir=CONFIGS, skip_missing=True)


def test_real_command_line_is_what_the_engine_resolves(tmp_path):
    """The command built for a run, given to the real `python -m llmc` (--print-config: nothing runs), resolves
    to exactly the config the sweep expects the results to record."""
    (run,) = sw.plan(["smollm"], ["spin"], ["w4a8"], results=tmp_path / "res", configs_dir=CONFIGS,
                     profile="cpu", limit=7, eval_names=["wikitext2", "arc_easy"], inference=True,
                     sets=["model.torch_dtype=float32"], baseline=False)
    proc = subprocess.run([*run.command, "--print-config"], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(json.dumps(yaml.safe_load(proc.stdout))) == run.expected
    assert run.expected["eval"]["name"] == ["wikitext2", "arc_easy"]
    assert run.expected["eval"]["eval_pos"] == ["fake_quant"]
    assert run.expected["model"]["torch_dtype"] == "float32"


# --------------------------------------------------------------------------------------------- runs
def test_complete_runs_are_skipped(fake):
    rc, runs = sweep_once(fake)
    assert rc == 0
    assert sorted(fake.launches()) == ["fp16", "rtn_w8a8_cpu", "smooth_w8a8_cpu"]
    assert all(status(r.result) == "complete" for r in runs)
    assert all(r.log.exists() for r in runs)
    manifest = json.loads((fake.results / "sweep.json").read_text())
    assert manifest["status"] == "complete" and [e["status"] for e in manifest["runs"]] == ["complete"] * 3
    assert manifest["runs"][1]["command"] == runs[1].command
    rc, _ = sweep_once(fake)
    assert rc == 0 and len(fake.launches()) == 3     # nothing launched again


def test_a_skipped_resumed_run_reports_the_seconds_of_all_its_attempts(fake):
    """A run resumed after its quantization (llmc.resume) started its record again: started to finished is
    the last attempt only, its stage times cover both, and the skipped run reports their sum."""
    sweep_once(fake, methods=("rtn",))
    runs = make_runs(fake, methods=("rtn",))
    data = json.loads(runs[1].result.read_text())
    data.update(started="2026-12-02T04:57:16+00:00", finished="2026-12-02T05:12:12+00:00",   # 896 s
                timings={"stages": {"load": 6.0, "quantize": 1398.0, "evaluate": 2995.0, "post-run": 255.0}},
                resumed=[{"from_status": "killed", "kept": ["fake_quant/wikitext2"]}])
    runs[1].result.write_text(json.dumps(data))
    sw.decide(runs)
    assert runs[1].action == "skip" and runs[1].seconds == pytest.approx(4654.0)
    data.pop("timings")                                   # a record without stage times: its wall time
    runs[1].result.write_text(json.dumps(data))
    sw.decide(runs)
    assert runs[1].seconds == pytest.approx(896.0)


def test_auto_dtype_is_compared_as_resolved_and_one_folder_keeps_one_dtype(fake, monkeypatch, capsys):
    """A grid made on a CPU with AMX (torch_dtype auto -> bfloat16) and continued on one without (auto ->
    float32): its complete runs are not the same config any more, and adding float32 runs beside them is
    refused in one line that says how to pin the dtype; pinned to bfloat16, the complete runs are skipped."""
    import llmc.utils
    monkeypatch.setattr(llmc.utils, "cpu_flags", lambda: {"avx512f", "amx_bf16"})
    rc, runs = sweep_once(fake, methods=("rtn",))
    assert rc == 0 and [r.dtype for r in runs] == ["bfloat16", "bfloat16"]
    for r in runs:                                   # stamped as the engine records it
        data = json.loads(r.result.read_text())
        data["environment"] = {"device": "cpu", "dtype": "bfloat16"}
        r.result.write_text(json.dumps(data))
    sweep_once(fake, methods=("rtn",))
    assert len(fake.launches()) == 2                 # same machine kind: skipped

    monkeypatch.setattr(llmc.utils, "cpu_flags", lambda: {"avx2"})
    runs = make_runs(fake, methods=("rtn",))
    assert [r.dtype for r in runs] == ["float32", "float32"]
    sw.decide(runs)
    assert all(r.action == "run" and "model.torch_dtype: bfloat16 -> float32" in r.reason for r in runs)
    s = sw.Sweep(make_runs(fake, methods=("smooth",), baseline=False), fake.results, quiet=True,
                 out=lambda line: None)
    with pytest.raises(UserError, match=r"2 in bfloat16 \(fp16.json, rtn_w8a8_cpu.json\).*"
                                        r"--set model.torch_dtype=bfloat16"):
        s.decide()
    pinned = make_runs(fake, methods=("rtn", "smooth"), sets=["model.torch_dtype=bfloat16"])
    s = sw.Sweep(pinned, fake.results, quiet=True, out=lambda line: None)
    s.decide()
    assert [r.action for r in pinned] == ["skip", "skip", "run"] and pinned[2].dtype == "bfloat16"
    assert sw.main(["--methods", "rtn", "--bits", "w8a8", "--profile", "cpu", "--limit", "3", "--configs",
                    str(CONFIGS), "--results", str(fake.results), "--dry-run"]) == 2
    assert "pin it, e.g. --set model.torch_dtype=bfloat16" in capsys.readouterr().err
    assert sw.main(["--methods", "rtn", "--bits", "w8a8", "--profile", "cpu", "--limit", "3", "--configs",
                    str(CONFIGS), "--results", str(fake.results), "--dry-run", "--set",
                    "model.torch_dtype=bfloat16"]) == 0
    assert "skip smollm rtn_w8a8_cpu (bfloat16): complete" in capsys.readouterr().out
    asked = make_runs(fake, methods=("rtn",), sets=["model.torch_dtype=float32"])   # a rerun asked for by name
    sw.decide(asked)
    assert all(r.action == "run" for r in asked)
    sw.check_one_dtype(asked)
    elsewhere = make_runs(fake, methods=("smooth",))   # a fresh folder takes float32 runs
    for r in elsewhere:
        r.result = fake.results.parent / "fp32" / r.result.name
    sw.check_one_dtype(elsewhere)


def test_a_grid_run_in_several_sweeps_keeps_one_manifest_of_all_its_runs(fake):
    """Cell by cell (as a long grid is run across sessions): each sweep's manifest lists its own runs and
    carries the earlier sweeps' with the command line that ran them; a rerun cell is listed once, as its own."""
    sweep_once(fake, methods=("rtn",))
    first = json.loads((fake.results / "sweep.json").read_text())
    sweep_once(fake, methods=("smooth",), baseline=False)
    sweep_once(fake, methods=("smooth",), bits=("w4a8",), baseline=False)
    manifest = json.loads((fake.results / "sweep.json").read_text())
    assert [e["name"] for e in manifest["runs"]] == ["smollm/smooth_w4a8_cpu"]
    earlier = {e["name"]: e for e in manifest["earlier_runs"]}
    assert sorted(earlier) == ["smollm/fp16", "smollm/rtn_w8a8_cpu", "smollm/smooth_w8a8_cpu"]
    assert earlier["smollm/rtn_w8a8_cpu"]["argv"] == first["argv"] and earlier["smollm/fp16"]["status"] == "complete"
    sweep_once(fake, methods=("rtn",))                       # a planned run is listed as this sweep's only
    manifest = json.loads((fake.results / "sweep.json").read_text())
    assert [e["name"] for e in manifest["runs"]] == ["smollm/fp16", "smollm/rtn_w8a8_cpu"]
    assert sorted(e["name"] for e in manifest["earlier_runs"]) == ["smollm/smooth_w4a8_cpu", "smollm/smooth_w8a8_cpu"]


def test_a_run_still_running_from_an_earlier_sweep_is_not_started_again(fake, monkeypatch):
    """Its pid is in the manifest's carried entries: another sweep over that cell leaves it alone."""
    sweep_once(fake, methods=("rtn",))
    sweep_once(fake, methods=("smooth",), baseline=False)
    runs = make_runs(fake, methods=("rtn",))
    data = json.loads(runs[1].result.read_text())
    data["status"] = "running"
    runs[1].result.write_text(json.dumps(data))
    manifest = json.loads((fake.results / "sweep.json").read_text())
    for e in manifest["earlier_runs"]:
        if e["name"] == "smollm/rtn_w8a8_cpu":
            e["pid"] = os.getpid()                            # a live process
    monkeypatch.setattr(sw, "_pid_alive", lambda pid, config: pid == os.getpid())
    sw.decide(runs, previous=manifest)
    assert [r.action for r in runs] == ["skip", "skip"] and "still running elsewhere" in runs[1].reason


def test_changed_config_is_rerun(fake):
    sweep_once(fake)
    runs = make_runs(fake, sets=["eval.bs=2"])
    sw.decide(runs)
    assert all(r.action == "run" and "eval.bs: 1 -> 2" in r.reason for r in runs)
    rc, _ = sweep_once(fake, sets=["eval.bs=2"])
    assert rc == 0 and len(fake.launches()) == 6


def test_speed_only_keys_do_not_rerun_complete_runs(fake):
    """eval.reference_cache and eval.reference_summary decide speed, not figures: a run recorded without the
    keys (before they existed) or with the other values is kept; any other key still reruns."""
    sweep_once(fake)
    for r in make_runs(fake):
        data = json.loads(r.result.read_text())
        data["config"]["eval"].pop("reference_cache")
        data["config"]["eval"].pop("reference_summary")
        r.result.write_text(json.dumps(data))
    runs = make_runs(fake, sets=["eval.reference_cache=false", "eval.reference_summary=false"])
    sw.decide(runs)
    assert all(r.action == "skip" and r.status == "complete" for r in runs)
    runs = make_runs(fake, sets=["eval.reference_cache=false", "eval.bs=2"])
    sw.decide(runs)
    assert all(r.action == "run" and r.reason == "config changed (eval.bs: 1 -> 2), rerun" for r in runs)
    assert sw.same_config({"a": 1}, {"a": 1}) and not sw.same_config(None, {"a": 1})


def test_killed_child_is_recorded_failed_and_retried(fake):
    fake.control(rtn_w8a8_cpu="kill")
    rc, runs = sweep_once(fake)
    assert rc == 1
    data = json.loads(runs[1].result.read_text())
    assert data["status"] == "failed" and data["error"] == "killed by signal 9 (out of memory?)"
    assert data["sweep"]["returncode"] == -9 and data["sweep"]["log"] == str(runs[1].log)
    assert data["config"] == runs[1].expected
    assert status(runs[2].result) == "complete"    # the sweep went on

    rc, runs = sweep_once(fake)                    # failed: reported, not rerun
    assert rc == 1 and len(fake.launches()) == 3 and runs[1].status == "failed" and runs[1].action == "skip"

    fake.control()
    rc, runs = sweep_once(fake, retry_failed=True)
    assert rc == 0 and fake.launches()[3:] == ["rtn_w8a8_cpu"]
    assert status(runs[1].result) == "complete"


def test_engine_failure_and_timeout(fake):
    fake.control(rtn_w8a8_cpu="fail", smooth_w8a8_cpu="sleep:60")
    t0 = time.monotonic()
    rc, runs = sweep_once(fake, timeout=2)
    assert rc == 1 and time.monotonic() - t0 < 30
    fail = json.loads(runs[1].result.read_text())
    assert fail["status"] == "failed" and fail["error"] == "RuntimeError: boom" and fail["sweep"]["returncode"] == 1
    slow = json.loads(runs[2].result.read_text())
    assert slow["status"] == "failed" and slow["error"] == "timeout after 2 s"


def test_stale_running_record_is_rerun(fake):
    sweep_once(fake, methods=("rtn",))
    runs = make_runs(fake, methods=("rtn",))
    data = json.loads(runs[1].result.read_text())
    data["status"] = "running"
    runs[1].result.write_text(json.dumps(data))
    sw.decide(runs)
    assert [r.action for r in runs] == ["skip", "run"] and "stale" in runs[1].reason


def test_workers_run_everything_once(fake, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    rc, runs = sweep_once(fake, workers=2, methods=("rtn", "smooth", "gptq"))
    assert rc == 0
    assert sorted(fake.launches()) == sorted(r.stem for r in runs) and len(runs) == 4
    threads = str(max(1, (os.cpu_count() or 1) // 2))
    assert all(line.split()[1] == threads for line in fake.launch_lines())


def stop_and_expect_130(proc, sig) -> str:
    """Send ``sig`` to a running sweep, wait up to 60 s (killed on a hang) and assert it exited 130, the
    interrupted status; returns its output."""
    try:
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    return out


def test_interrupted_sweep_resumes(fake):
    fake.control(smooth_w8a8_cpu="sleep:120")
    cmd = [sys.executable, str(ROOT / "tools" / "sweep.py"), "--models", "smollm", "--methods", "rtn", "smooth",
           "gptq", "--bits", "w8a8", "--profile", "cpu", "--limit", "3", "--results", str(fake.results),
           "--configs", str(CONFIGS), "--engine-cmd", " ".join(fake.engine)]
    runs = make_runs(fake, methods=("rtn", "smooth", "gptq"))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (runs[1].result.exists() and status(runs[1].result) == "complete" and runs[2].result.exists()
                    and status(runs[2].result) == "running"):
                break
            time.sleep(0.05)
        else:
            pytest.fail("run 3 never started")
    except BaseException:
        proc.kill()
        raise
    stop_and_expect_130(proc, signal.SIGTERM)
    assert [status(r.result) for r in runs[:3]] == ["complete", "complete", "interrupted"]
    assert not runs[3].result.exists()
    manifest = json.loads((fake.results / "sweep.json").read_text())
    assert manifest["status"] == "interrupted"
    assert [e["status"] for e in manifest["runs"]] == ["complete", "complete", "interrupted", "pending"]

    fake.control()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert fake.launches() == ["fp16", "rtn_w8a8_cpu", "smooth_w8a8_cpu", "smooth_w8a8_cpu", "gptq_w8a8_cpu"]
    assert all(status(r.result) == "complete" for r in runs)
    assert "wikitext2 20.50 ppl" in proc.stdout and "smollm/gptq_w8a8_cpu" in proc.stdout


# --------------------------------------------------------------------------------------------- seeds
def test_seeds_are_a_grid_axis(fake):
    """--seeds: each method once per seed (base.seed and calib.seed, file ..._seed<S>), the baseline once;
    the engine resolves each command to the config the sweep expects, and a rerun skips them all."""
    runs = make_runs(fake, methods=("rtn",), seeds=[1, 2, 1])
    assert [r.stem for r in runs] == ["fp16", "rtn_w8a8_cpu_seed1", "rtn_w8a8_cpu_seed2"]
    assert [r.seed for r in runs] == [None, 1, 2]
    assert "--task_id" not in runs[0].command and runs[0].expected["base"]["seed"] == 42
    for r, seed in zip(runs[1:], (1, 2)):
        assert r.command[r.command.index("--task_id") + 1] == f"seed{seed}"
        assert r.expected["base"]["seed"] == seed and r.expected["calib"]["seed"] == seed
        assert r.log.name == f"rtn_w8a8_cpu_seed{seed}.log"
    cmd = runs[2].command
    proc = subprocess.run([sys.executable, "-m", "llmc", *cmd[cmd.index("--config"):], "--print-config"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(json.dumps(yaml.safe_load(proc.stdout))) == runs[2].expected

    rc, runs = sweep_once(fake, methods=("rtn",), seeds=[1, 2])
    assert rc == 0 and sorted(fake.launches()) == ["fp16", "rtn_w8a8_cpu_seed1", "rtn_w8a8_cpu_seed2"]
    assert json.loads(runs[2].result.read_text())["config"]["calib"]["seed"] == 2
    rc, _ = sweep_once(fake, methods=("rtn",), seeds=[1, 2])
    assert rc == 0 and len(fake.launches()) == 3

    with pytest.raises(UserError, match="--seeds sets base.seed"):
        make_runs(fake, seeds=[1], sets=["base.seed=3"])


def test_seeds_also_draw_the_rotations_of_rotation_methods(fake):
    """QuaRot's and SpinQuant's random rotations come from quant.special.rotation_seed: --seeds sets it too
    (otherwise every seed would rotate alike); a method without rotations is left as it was."""
    runs = make_runs(fake, methods=("quarot", "spin", "rtn"), seeds=[3], baseline=False)
    by_stem = {r.stem: r for r in runs}
    for stem in ("quarot_w8a8_cpu_seed3", "spin_w8a8_cpu_seed3"):
        assert by_stem[stem].expected["quant"]["special"]["rotation_seed"] == 3
        assert "--quant.special.rotation_seed" in by_stem[stem].command
    assert "--quant.special.rotation_seed" not in by_stem["rtn_w8a8_cpu_seed3"].command


# --------------------------------------------------------------------------------------------- retries
def test_retries_restart_a_killed_run(fake):
    """--retries: a run whose process died of SIGKILL (the out-of-memory killer) is started again and the
    manifest says how many attempts it took; failures of the engine itself are not retried."""
    fake.control(rtn_w8a8_cpu="kill-once", smooth_w8a8_cpu="fail")
    runs = make_runs(fake)
    s = sw.Sweep(runs, fake.results, quiet=True, grace=5, out=lambda line: None,
                 executor=make_executor("local", retries=1))
    s.decide()
    assert s.run() == 1
    assert fake.launches().count("rtn_w8a8_cpu") == 2 and fake.launches().count("smooth_w8a8_cpu") == 1
    assert status(runs[1].result) == "complete" and status(runs[2].result) == "failed"
    entries = {e["name"]: e for e in json.loads((fake.results / "sweep.json").read_text())["runs"]}
    assert entries["smollm/rtn_w8a8_cpu"]["attempts"] == 2 and entries["smollm/fp16"]["attempts"] == 1
    assert runs[1].log.read_text().count("=== ") == 2


# --------------------------------------------------------------------------------------------- executors
def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "sweep.py"), "--methods", "rtn", "--bits", "w8a8",
                           "--configs", str(CONFIGS), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.mark.parametrize("args, message", [
    (["--gpus-per-run", "1"], "--gpus-per-run: only with --executor ray"),
    (["--address", "10.0.0.1:6379"], "--address: only with --executor ray"),
    (["--retries", "-1"], "--retries: must be 0 or more"),
    (["--executor", "ray", "--cpus-per-run", "0"], "--cpus-per-run: must be more than 0"),
    (["--workers", "0"], "--workers: must be at least 1"),
])
def test_executor_settings_it_cannot_honour_are_one_line(tmp_path, args, message):
    proc = cli("--results", str(tmp_path / "r"), *args)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {message}"), proc.stderr
    assert not (tmp_path / "r").exists()


def test_ray_not_installed_is_one_line(fake, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)      # `import ray` raises ImportError
    rc = sw.main(["--executor", "ray", "--methods", "rtn", "--bits", "w8a8", "--configs", str(CONFIGS),
                  "--results", str(fake.results), "--engine-cmd", " ".join(fake.engine), "--quiet"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and err == ["error: --executor ray: Ray is not installed (pip install -e '.[cluster]')"]
    assert fake.launches() == []


def test_the_sweep_says_when_a_running_run_enters_a_stage_and_where_its_loop_stands(fake):
    fake.control(rtn_w8a8_cpu="stages")
    lines = []
    runs = make_runs(fake, methods=("rtn",))
    s = sw.Sweep(runs, fake.results, quiet=False, grace=5, out=lines.append, watch_every=0.2)
    s.decide()
    assert s.run() == 0
    said = [line.split(" ", 1)[1] for line in lines if "rtn_w8a8_cpu: " in line]
    assert said == ["smollm rtn_w8a8_cpu: quantize: transform (3/30 GPTQ blocks)",
                    "smollm rtn_w8a8_cpu: evaluate: piqa at fake_quant"]     # once per stage, in order


@pytest.mark.parametrize("earlier", ["before the sweep", "in the sweep"])
def test_the_sweep_does_not_report_the_stage_a_killed_attempt_left_in_the_record(fake, earlier):
    """A rerun's record keeps the killed attempt's stage until the new process writes its own: the watcher must
    not print it as the new run's stage. Killed before this sweep (the record's writer is the one seen before
    the sweep started the run) or by it and retried (the writer is gone)."""
    runs = make_runs(fake, methods=("rtn",))
    rtn = next(r for r in runs if r.stem == "rtn_w8a8_cpu")
    if earlier == "before the sweep":
        fake.control(rtn_w8a8_cpu="slow-start")
        rtn.result.parent.mkdir(parents=True, exist_ok=True)
        writer = {"host": platform.node(), "pid": os.getpid()}  # a live process: only the earlier-writer rule holds
        rtn.result.write_text(json.dumps({"schema_version": 1, "status": "running", "stage": "evaluate: wikitext2",
                                          "config": rtn.expected, "metrics": {}, "process": writer}))
    else:
        fake.control(rtn_w8a8_cpu="stage-killed-once")
    lines = []
    s = sw.Sweep(runs, fake.results, quiet=False, grace=5, out=lines.append, watch_every=0.2,
                 executor=make_executor("local", retries=1))
    s.decide()
    assert s.run() == 0
    said = [line.split(" ", 1)[1] for line in lines          # the watcher's lines: "<time> <model> <stem>: <stage>"
            if "smollm rtn_w8a8_cpu: " in line and not line.startswith("smollm")]
    assert said == ["smollm rtn_w8a8_cpu: quantize: transform (3/30 GPTQ blocks)",
                    "smollm rtn_w8a8_cpu: evaluate: piqa at fake_quant"]
