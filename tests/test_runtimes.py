"""The edge runtimes' contract (llmc_slm.tracks.runtimes) and the memory helper, without any runtime installed:
availability and skips, the torch-free idle/peak footprint, and the peak above idle in Track 2's records and
Table 3 (old results without it still read)."""

import subprocess
import sys

import pytest

from llmc_slm.tracks import runtimes
from llmc_slm.tracks.memory import Footprint, peak_above_idle


def test_every_runtime_resolves_to_a_measure_function_with_the_contract_signature():
    import importlib.util
    import inspect
    assert set(runtimes.RUNTIMES) >= {"llamacpp", "executorch"}
    for name, ref in runtimes.RUNTIMES.items():
        module = ref.partition(":")[0]
        assert importlib.util.find_spec(module) is not None, ref
        if runtimes.availability(name) is None:       # its package is installed: import it and read the signature
            params = inspect.signature(runtimes.resolve(name)).parameters
            assert {"threads", "prefill_ids", "decode_tokens", "ppl_windows"} <= set(params), (name, list(params))


def test_a_missing_module_or_package_is_a_reason(monkeypatch):
    monkeypatch.setitem(runtimes.RUNTIMES, "nowhere", "llmc_slm.tracks.runtimes.nowhere:measure")
    assert "not in this installation" in runtimes.availability("nowhere")
    monkeypatch.setitem(runtimes.RUNTIMES, "nopkg", "llmc_slm.tracks.runtimes.llamacpp:measure")
    monkeypatch.setitem(runtimes.PACKAGES, "nopkg", "surely_not_a_package_xyz")
    assert "surely_not_a_package_xyz" in runtimes.availability("nopkg")
    assert "unknown runtime" in runtimes.availability("nonesuch")


def test_measure_in_child_skips_an_unavailable_runtime(monkeypatch, tmp_path):
    monkeypatch.setitem(runtimes.PACKAGES, "llamacpp", "surely_not_a_package_xyz")
    row = runtimes.measure_in_child("llamacpp", tmp_path / "m.gguf", threads=1, prefill_ids=[[1, 2, 3]])
    assert row["runtime"] == "llamacpp" and "surely_not_a_package_xyz" in row["skipped"]


def test_footprint_counts_what_is_allocated_during_inference():
    probe = Footprint()
    idle = probe.idle()
    with probe.inference():
        block = bytearray(64 * 2 ** 20)          # touched: 64 MiB resident
        block[::4096] = b"x" * len(block[::4096])
    d = probe.as_dict()
    del block
    assert d["idle_rss_bytes"] == idle > 0
    assert d["peak_above_idle_bytes"] == d["peak_rss_bytes"] - idle
    assert d["peak_above_idle_bytes"] > 48 * 2 ** 20
    assert d["peak_process_bytes"] >= d["peak_rss_bytes"]


def test_memory_helper_and_runtime_child_import_no_torch():
    code = ("import sys, llmc_slm.tracks.memory, llmc_slm.tracks.runtimes, llmc_slm.tracks.runtimes.__main__, "
            "llmc_slm.tracks.runtimes.llamacpp; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_peak_above_idle_reads_new_old_and_missing_profiles():
    assert peak_above_idle({"peak_above_idle_bytes": 5}) == 5
    assert peak_above_idle({"peak_mem_above_runtime": 7}) == 7       # the torch child's older name
    assert peak_above_idle({"peak_mem": 9}) is None                    # written before either existed


def test_track2_section_and_table3_show_the_peak_above_idle():
    from llmc_slm.reports.collect import _profile
    from llmc_slm.tracks.inference import infer_scores
    from llmc_slm.tracks.records import InferenceSection
    base = {"peak_mem": 800 * 2 ** 20, "size": 256 * 2 ** 20, "tps": 100.0, "macs": 1.0, "params_calflops": 1.0,
            "macs_calflops": 1.0, "memory_kind": "cpu_peak_rss", "peak_above_idle_bytes": 400 * 2 ** 20}
    comp = dict(base, peak_mem=700 * 2 ** 20, size=140 * 2 ** 20, peak_above_idle_bytes=200 * 2 ** 20)
    scores = infer_scores(base, comp)
    assert scores["peak_above_idle"]["ratio"] == pytest.approx(2.0)
    section = InferenceSection(baseline=base, compressed=comp, scores=scores)
    assert section.peak_above_idle() == 200 * 2 ** 20
    assert _profile(comp)["peak_above_idle_mb"] == pytest.approx(200)
    old = {k: v for k, v in comp.items() if k != "peak_above_idle_bytes"}
    assert _profile(old)["peak_above_idle_mb"] is None
    assert "peak_above_idle" not in infer_scores(base, old)


def test_edge_benchmark_gives_both_runtimes_one_context_and_reuses_what_it_made(tmp_path):
    from benchmarks.edge_runtimes import Artifacts, context_length
    assert context_length(128, 32) == 256                   # llama.cpp's n_ctx for prefill + decode
    assert context_length(250, 32) == 512
    assert context_length(128, 32, ppl_seq_len=1024) == 1024
    made = Artifacts(tmp_path / "m", 256)
    program = tmp_path / "m" / "et_float"
    program.mkdir(parents=True)
    made.record("executorch", "float", program)
    made.record("executorch", "w8a8", None)                 # a skip is not recorded: it is tried again
    assert Artifacts(tmp_path / "m", 256).have("executorch", "float") == program
    assert Artifacts(tmp_path / "m", 256).have("executorch", "w8a8") is None
    assert Artifacts(tmp_path / "m", 512).have("executorch", "float") is None      # another cache length
    program.rmdir()
    assert Artifacts(tmp_path / "m", 256).have("executorch", "float") is None      # gone from disk

