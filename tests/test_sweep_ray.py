"""tools/sweep.py --executor ray on a local Ray with 2 CPUs (temporary HOME and temp dir, shut down after).

A three-cell micro-grid of a tiny random model through the real engine: every cell completes, a cell whose
Ray worker is killed mid-run and one whose engine is SIGKILLed are retried by Ray and complete, and a rerun
skips every cell. Then Ctrl-C (exit 130, the running engine records ``interrupted``) and the one-line
refusals of a cluster that cannot run the grid: a GPU it does not have, workers that cannot see the results.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[cluster]' (the dev set-up "
                                        "installs it)")

from llmc_slm import sweep as sw  # noqa: E402
from llmc_slm.executors import ray as ray_executor  # noqa: E402
from test_sweep import CONFIGS, FAKE_ENGINE, stop_and_expect_130  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RTN = "quant: {{method: RTN, weight: {{bit: {bits}, granularity: per_channel}}, act: {{bit: 8, granularity: per_token}}}}"

ENGINE = r'''
"""The real engine, except that the first attempt of rtn_w8a8 kills its Ray worker mid-run and the first
attempt of rtn_w4a8 is SIGKILLed (the out-of-memory killer's way)."""
import os, runpy, signal, sys, time
from pathlib import Path

here = Path(__file__).parent
stem = Path(os.environ["SLMQUANT_SWEEP_RESULT"]).stem
with open(here / "launches.txt", "a") as f:
    f.write(f"{stem} {os.getpid()} {os.environ.get('OMP_NUM_THREADS')}\n")
once = here / f"{stem}.once"
if stem in ("rtn_w8a8", "rtn_w4a8") and not once.exists():
    once.touch()
    time.sleep(0.5)
    if stem == "rtn_w8a8":
        os.kill(os.getppid(), signal.SIGKILL)    # the Ray worker running this cell dies
        time.sleep(120)                          # ... and so must this orphan (PR_SET_PDEATHSIG)
    os.kill(os.getpid(), signal.SIGKILL)
sys.argv = ["llmc"] + sys.argv[1:]
runpy.run_module("llmc", run_name="__main__")
'''


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """Ray on this machine with 2 CPUs, its HOME and temp dir temporary (a short path: Ray's sockets live
    there), shut down after the module's tests."""
    saved = {k: os.environ.get(k) for k in ("HOME", "SLMQUANT_CACHE")}
    os.environ["SLMQUANT_CACHE"] = saved["SLMQUANT_CACHE"] or str(Path.home() / ".cache" / "slmquant")
    os.environ["HOME"] = str(tmp_path_factory.mktemp("home"))
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    try:
        info = ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False,
                        configure_logging=False)
        yield info
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(temp_dir, ignore_errors=True)


def tiny_configs(root: Path, model_dir: Path, data: Path) -> Path:
    configs = root / "configs" / "tiny"
    configs.mkdir(parents=True)
    model = f"model: {{path: {model_dir}, torch_dtype: float32}}\n"
    evals = f"eval: {{name: [wikitext2], limit: 1, seq_len: 64, path: {data}, paired: false}}\n"
    (configs / "fp16.yml").write_text(model + evals)
    for bits in (8, 4):
        (configs / f"rtn_w{bits}a8.yml").write_text(model + RTN.format(bits=bits) + "\n" + evals)
    return configs.parent


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:   # a zombie is gone for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_micro_grid_retries_killed_cells_and_a_rerun_skips_all(tmp_path, tiny_model_dir, local_ray, capsys):
    data = tmp_path / "data"
    shutil.copytree(ROOT.parent / "shared" / "data" / "wikitext2", data / "wikitext2")
    configs = tiny_configs(tmp_path, tiny_model_dir, data)
    engine = tmp_path / "engine.py"
    engine.write_text(ENGINE)
    results = tmp_path / "results"
    argv = ["--executor", "ray", "--retries", "1", "--models", "tiny", "--methods", "rtn", "--bits", "w8a8",
            "w4a8", "--configs", str(configs), "--results", str(results), "--engine-cmd",
            f"{sys.executable} {engine}"]
    assert sw.main(argv) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    launches = [line.split() for line in (tmp_path / "launches.txt").read_text().splitlines()]
    assert sorted(x[0] for x in launches) == ["fp16", "rtn_w4a8", "rtn_w4a8", "rtn_w8a8", "rtn_w8a8"]
    assert all(x[2] == "1" for x in launches)                     # --cpus-per-run 1: one thread each
    for stem, pos in (("fp16", "pretrain"), ("rtn_w8a8", "fake_quant"), ("rtn_w4a8", "fake_quant")):
        data_ = json.loads((results / "tiny" / f"{stem}.json").read_text())
        assert data_["status"] == "complete" and data_["metrics"][pos]["wikitext2"]["ppl"] > 1, stem
    manifest = {e["name"]: e for e in json.loads((results / "sweep.json").read_text())["runs"]}
    assert manifest["tiny/rtn_w8a8"]["attempts"] == 2 and manifest["tiny/rtn_w4a8"]["attempts"] == 2
    assert manifest["tiny/fp16"]["attempts"] == 1
    node_id = ray.get_runtime_context().get_node_id()[:12]
    assert all(e["node"] and e["node"].endswith(node_id) for e in manifest.values())   # which node ran it
    assert "tiny rtn_w8a8 complete" in out and "2 attempts" in out
    log = (results / "logs" / "tiny" / "rtn_w8a8.log").read_text()
    assert log.count("=== ") == 2 and f"on {manifest['tiny/rtn_w8a8']['node']}" in log
    orphan = int(next(x[1] for x in launches if x[0] == "rtn_w8a8"))   # the first attempt's engine
    deadline = time.monotonic() + 10
    while _alive(orphan) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(orphan), "the engine of a dead worker outlived it"

    assert sw.main(argv) == 0
    out = capsys.readouterr().out
    assert len((tmp_path / "launches.txt").read_text().splitlines()) == 5     # nothing launched again
    assert out.count("(skipped: complete)") == 3


@pytest.fixture
def fake(tmp_path):
    script = tmp_path / "fake_engine.py"
    script.write_text(FAKE_ENGINE)
    return [sys.executable, str(script)]


def fake_argv(tmp_path, fake, *extra):
    return ["--executor", "ray", "--methods", "rtn", "smooth", "--bits", "w8a8", "--profile", "cpu", "--limit",
            "3", "--configs", str(CONFIGS), "--results", str(tmp_path / "res"), "--engine-cmd", " ".join(fake),
            "--quiet", *extra]


def test_ctrl_c_stops_the_ray_tasks_and_exits_130(tmp_path, fake, local_ray):
    """A second driver joins the running Ray (--address); SIGINT stops its tasks: the running engine gets
    SIGTERM and records ``interrupted``, the sweep exits 130, and a rerun finishes the grid."""
    (tmp_path / "control.json").write_text(json.dumps({"smooth_w8a8_cpu": "sleep:120"}))
    argv = fake_argv(tmp_path, fake, "--address", local_ray.address_info["address"])
    proc = subprocess.Popen([sys.executable, str(ROOT / "tools" / "sweep.py"), *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    smooth = tmp_path / "res" / "smollm" / "smooth_w8a8_cpu.json"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if smooth.exists() and json.loads(smooth.read_text())["status"] == "running":
                break
            time.sleep(0.1)
        else:
            proc.kill()
            pytest.fail(f"the slow cell never started: {proc.communicate()[0][-3000:]}")
    except BaseException:
        proc.kill()
        raise
    stop_and_expect_130(proc, signal.SIGINT)
    assert json.loads(smooth.read_text())["status"] == "interrupted"
    pid = int(next(line.split()[2] for line in (tmp_path / "launches.txt").read_text().splitlines()
                   if line.startswith("smooth_w8a8_cpu")))
    assert not _alive(pid)
    manifest = json.loads((tmp_path / "res" / "sweep.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["executor"] == "ray"

    (tmp_path / "control.json").write_text("{}")
    assert sw.main(fake_argv(tmp_path, fake)) == 0
    assert json.loads(smooth.read_text())["status"] == "complete"


def test_a_gpu_the_cluster_does_not_have_is_refused_in_one_line(tmp_path, fake, local_ray, capsys):
    assert sw.main(fake_argv(tmp_path, fake, "--gpus-per-run", "1")) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: --gpus-per-run 1: no node of the local Ray has 1 GPU"), err
    assert not (tmp_path / "launches.txt").exists()


def test_workers_that_cannot_see_the_results_folder_are_refused(tmp_path, fake, local_ray, capsys, monkeypatch):
    """A node whose results folder is its own disk (simulated: the probe writes elsewhere, as a node with an
    unshared path would): its probe file never appears here, and the sweep refuses in one line."""
    elsewhere = str(tmp_path / "node_local_disk")

    def probe_on_unshared_disk(results, cwd, executable, token):
        import os as os_
        import ray as ray_
        node_id = ray_.get_runtime_context().get_node_id()
        os_.makedirs(elsewhere, exist_ok=True)
        name = f".probe-{token}-{node_id[:12]}"
        with open(os_.path.join(elsewhere, name), "w") as f:
            f.write(node_id)
        return {"node": "10.9.9.9 " + node_id[:12], "node_id": node_id, "file": os_.path.join(results, name),
                "problems": []}

    monkeypatch.setattr(ray_executor, "probe_worker", probe_on_unshared_disk)
    assert sw.main(fake_argv(tmp_path, fake)) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "cannot see the results folder" in err[0] and "10.9.9.9" in err[0], err
    assert not (tmp_path / "launches.txt").exists()
    assert list((tmp_path / "node_local_disk").iterdir())      # the probe did run on the node
