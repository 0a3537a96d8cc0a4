"""The command line: user mistakes give one line on stderr, exit status 2, and no traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FP16 = str(ROOT / "configs/smollm/fp16.yml")


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "llmc", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_unknown_key():
    assert_one_line_error(run_cli("--config", FP16, "--eval.bogus", "1"), "eval.bogus: unknown key")


def test_misspelt_granularity(tmp_path):
    cfg = tmp_path / "g.yml"
    cfg.write_text("quant:\n  method: RTN\n  weight: {bit: 8, granularity: per_chanel}\n")
    assert_one_line_error(run_cli("--config", str(cfg)), "quant.weight.granularity", "per_chanel",
                          "per_channel")


def test_model_path_that_does_not_exist():
    assert_one_line_error(run_cli("--config", FP16, "--model.path", "./no/such/model"),
                          "model.path", "./no/such/model", "smollm2-135m-instruct")


def test_data_file_that_does_not_exist():
    assert_one_line_error(run_cli("--config", FP16, "--eval.path", "/no/such/wiki.test.raw"),
                          "eval.path", "/no/such/wiki.test.raw")


def test_missing_config_file():
    assert_one_line_error(run_cli("--config", "configs/nope.yml"), "configs/nope.yml")


def test_print_config_applies_overrides():
    proc = run_cli("--config", FP16, "--eval.limit", "7", "--print-config")
    assert proc.returncode == 0, proc.stderr
    assert "limit: 7" in proc.stdout and "path: smollm2-135m-instruct" in proc.stdout


@pytest.mark.parametrize("cfg", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yml")
                                        if p.parent.name != "profiles"))
@pytest.mark.parametrize("profile", [None, "cpu"])
def test_every_shipped_config_validates(cfg, profile):
    from llmc.config import load_config
    loaded = load_config(ROOT / cfg, profile=profile)
    assert loaded.model.path in ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "gemma-3-270m")
    if profile:
        faithful = load_config(ROOT / cfg)
        assert (loaded.calib is None) == (faithful.calib is None)  # a profile never adds calibration
        if loaded.calib is not None:  # and it really shrinks it
            tokens = lambda c: c.calib.n_samples * c.calib.seq_len  # noqa: E731
            assert tokens(loaded) < tokens(faithful)


def test_unknown_profile_is_a_one_line_error():
    assert_one_line_error(run_cli("--config", FP16, "--profile", "gpu-farm"), "--profile", "gpu-farm", "cpu")


def test_terminated_run_records_interruption(tmp_path):
    """SIGTERM during a run leaves a results file that says so (never a stale 'running')."""
    import json
    import signal
    import time
    proc = subprocess.Popen([sys.executable, "-m", "llmc", "--config", FP16, "--save.save_path", str(tmp_path),
                             "--model.path", "smollm2-135m-random", "--quiet"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    result = tmp_path / "fp16.json"
    deadline = time.time() + 120
    while time.time() < deadline and not (result.exists() and json.loads(result.read_text()).get("model")):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode == 130
    data = json.loads(result.read_text())
    assert data["status"] == "interrupted"
