"""Track 2 inside the edge runtimes, as report tables, from the committed JSON of the edge measurements.

* :func:`runtime_table` (``benchmarks/edge_runtimes.py --json``): per model and runtime, each artifact's
  stored size, peak resident memory above the idle process, prefill and decode tokens/s, and the ratios to
  the same runtime's float model measured in the same run (sizes and memory: float / row, higher = smaller;
  speeds: row / float, higher = faster);
* :func:`perplexity_table` (``benchmarks/gguf_ppl.py --json`` and ``tools/executorch_measure.py``): each
  quantized run deployed in a runtime, its WikiText-2 perplexity there beside the run's own fake-quant
  figure in torch on the same windows, and the runtime's float model and llama.cpp's own quantization as
  peers (perplexity and size: these runs may share the CPU, so their speeds are left to the benchmark).
"""

from __future__ import annotations

import json
from pathlib import Path

from .collect import ReportError
from .render import Table

EDGE_FILES = "edge*.json"                # benchmarks/edge_runtimes.py --json (one file per invocation)
LLAMACPP_PPL_FILE = "llamacpp_ppl.json"  # benchmarks/gguf_ppl.py --json
EXECUTORCH_PPL_FILE = "executorch_ppl.json"   # tools/executorch_measure.py --out


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise ReportError(f"{path}: cannot read it ({e.strerror})") from None
    except ValueError as e:
        raise ReportError(f"{path}: not JSON ({e})") from None


def _mib(value) -> str:
    return "—" if value is None else f"{value / 2**20:,.1f}"


def _x(value) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _rate(value) -> str:
    return "—" if not value else f"{value:,.1f}"


def runtime_table(report: dict, name: str = "edge_runtimes") -> Table:
    threads = report.get("threads")
    protocol = report.get("protocol", {})
    t = Table(name, f"Edge runtimes: size, memory and speed against each runtime's float model ({threads} thread(s))",
              ["Model", "Runtime", "Artifact", "Size MiB", "Peak above idle MiB", "Prefill tok/s", "Decode tok/s",
               "Size ×", "Memory ×", "Prefill ×", "Decode ×"], left=3)
    for model, entry in report.get("models", {}).items():
        first = True
        for r in entry.get("rows", []):
            cells = [model, r.get("runtime", "—"), r.get("variant", "—")]
            if r.get("skipped"):
                t.add(cells + [f"skipped: {r['skipped']}"] + ["—"] * 7, new_group=first)
            else:
                t.add(cells + [_mib(r.get("stored_bytes")), _mib(r.get("peak_above_idle_bytes")),
                               _rate(r.get("prefill_tokens_per_s")), _rate(r.get("decode_tokens_per_s")),
                               _x(r.get("size_x")), _x(r.get("peak_above_idle_x")), _x(r.get("prefill_x")),
                               _x(r.get("decode_x"))], new_group=first)
            first = False
    env = report.get("environment", {})
    t.notes.append(f"Prefill: 1 x {protocol.get('seq_len', '—')} tokens; decode: {protocol.get('decode_tokens', '—')} "
                   f"tokens after it; context {protocol.get('context', '—')} in every runtime. Random weights of each "
                   f"architecture (speed, size and memory depend on the shapes only). torch {env.get('torch', '—')}, "
                   f"{env.get('cpu', '—')}.")
    t.notes.append("Float models: torch bfloat16, llama.cpp F16, ExecuTorch float32. w8a8 / w4a8: our RTN codes "
                   "(torch packed int8 / int4, llama.cpp Q8_0 / Q4_0, ExecuTorch 8da8w / 8da4w); peer_q8_0 / "
                   "peer_q4_0: llama.cpp's own round-to-nearest of the float model.")
    return t


def _ppl_row(t: Table, run: str, runtime: str, r: dict, fake, note: str = "") -> None:
    ppl = r.get("wikitext2_ppl")
    if r.get("skipped"):
        t.add([run, runtime, "—", "—" if fake is None else f"{fake:.3f}", f"skipped: {r['skipped']}", "—", "—"],
              note=note)
        return
    gap = "—" if not (ppl and fake) else f"{100 * (ppl / fake - 1):+.2f}%"
    windows = r.get("ppl_windows") or r.get("windows")
    length = r.get("ppl_window_len") or r.get("seq_len")
    t.add([run, runtime, f"{windows} x {length}" if windows else "—", "—" if fake is None else f"{fake:.3f}",
           "—" if ppl is None else f"{ppl:.3f}", gap, _mib(r.get("stored_bytes"))], note=note)


def perplexity_table(llamacpp: dict | None, executorch: dict | None, name: str = "edge_perplexity") -> Table:
    t = Table(name, "Deployed perplexity: each run in the runtime against its fake-quant figure in torch",
              ["Run", "Runtime", "Windows", "Fake-quant ppl (torch)", "Runtime ppl", "Gap", "Size MiB"], left=2)
    if llamacpp:
        for r in llamacpp.get("rows", []):
            fake = r.get("fake_quant_ppl")
            if r.get("skipped") and r.get("error"):
                r = {**r, "skipped": r["error"].get("message") or r["skipped"]}
            _ppl_row(t, r.get("label", "—"), "llama.cpp", r, fake if fake is not None else r.get("torch_float_ppl"),
                     r.get("note", ""))
        t.notes.append(f"llama.cpp: {llamacpp.get('threads', '—')} thread(s); the float and llama.cpp's own Q8_0 / "
                       "Q4_0 rows are compared with the float model's perplexity in torch.")
    if executorch:
        first = True
        for run, r in executorch.items():
            if run == "protocol" or not isinstance(r, dict):
                continue
            fake = r.get("fake_quant_ppl")
            if fake is None and run == "fp32":
                fake = next((v.get("float_torch_ppl") for v in executorch.values()
                             if isinstance(v, dict) and v.get("float_torch_ppl")), None)
            if first and t.rows:
                t.rules.append(len(t.rows))
            _ppl_row(t, run, "ExecuTorch", r, fake)
            first = False
        proto = executorch.get("protocol", {})
        t.notes.append(f"ExecuTorch (XNNPACK): {proto.get('threads', '—')} thread(s); fp32 is the float32 program, "
                       "compared with the float model in torch.")
    t.notes.append("Speeds are the edge benchmark's (run alone), not these runs'. Gap: runtime / torch - 1. The runtimes quantize activations themselves (llama.cpp per block of "
                   "32, XNNPACK asymmetrically per token), the torch protocol symmetrically per token.")
    return t


def merged_reports(paths: list[Path]) -> dict:
    """Several edge-benchmark reports (e.g. one model or one set of runtimes each) as one: the models of all,
    in file order; threads and protocol must agree."""
    merged: dict = {}
    for path in paths:
        report = _read(path)
        if not merged:
            merged = {**report, "models": dict(report.get("models", {}))}
            continue
        for key in ("threads", "protocol"):
            if report.get(key) != merged.get(key):
                raise ReportError(f"{path}: its {key} differs from {paths[0].name}'s; measure them alike")
        merged["models"].update(report.get("models", {}))
    return merged


def edge_tables(folder: Path) -> dict[str, Table]:
    """The tables the files present in ``folder`` give (``runtime_table`` needs an ``edge*.json``;
    ``perplexity_table`` either perplexity file)."""
    folder = Path(folder)
    out = {}
    edge_files = sorted(folder.glob(EDGE_FILES))
    if edge_files:
        out["edge_runtimes"] = runtime_table(merged_reports(edge_files))
    llamacpp = _read(folder / LLAMACPP_PPL_FILE) if (folder / LLAMACPP_PPL_FILE).is_file() else None
    executorch = _read(folder / EXECUTORCH_PPL_FILE) if (folder / EXECUTORCH_PPL_FILE).is_file() else None
    if llamacpp or executorch:
        out["edge_perplexity"] = perplexity_table(llamacpp, executorch)
    return out
