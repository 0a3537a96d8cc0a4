"""ExecuTorch Track 2 of SmolLM2 runs (packed checkpoints in out/runs, see docs/executorch_measurements.md)
against the fp32 program: ``python tools/executorch_measure.py rtn_w8a8 smooth_w8a8 spin_w4a8`` from the
repository root; results in out/et_results.json. A measurement script, not a test."""
import json, sys, time
from pathlib import Path
import torch
from llmc.export.executorch import export_packed, ensure_float_pte
from llmc_slm.tracks.runtimes import executorch as rt
from llmc_slm.tracks.loading import fixed_input_ids, load_tokenizer
from llmc.data.sources import find_dataset
from llmc.data.wikitext2 import evaluation_text
from llmc.eval.perplexity import window_ids

OUT = Path("out")
runs = sys.argv[1:] or ["rtn_w8a8", "smooth_w8a8", "spin_w4a8"]
fp = ensure_float_pte("smollm2-135m-instruct", 512, OUT / "et" / "fp32")
tok = load_tokenizer(fp)
ids, info = fixed_input_ids(tok, 128)
windows = window_ids(tok(evaluation_text(find_dataset("wikitext2", None)), return_tensors="pt").input_ids[0], 512)[:16]
results = {}
path = OUT / "et_results.json"
if path.is_file():
    results = json.loads(path.read_text())
def save():
    path.write_text(json.dumps(results, indent=2))
for name in ["fp32"] + runs:
    if name == "fp32":
        art = fp
    else:
        packed = OUT / "runs" / f"{name}_cpu_real_quant"
        art = OUT / "et" / name
        if not (art / "model.pte").is_file():
            t = time.time(); export_packed(packed, art, 512); print(name, "exported in", time.time() - t, flush=True)
    r = rt.profile(art, threads=1, prefill_ids=ids, decode_tokens=32, ppl_windows=windows, input_source=info["source"])
    r["export_info"] = json.loads((art / "executorch.json").read_text())
    if name != "fp32":
        rec = json.loads((OUT / "runs" / f"{name}_cpu.json").read_text())
        r["fake_quant_ppl"] = rec["metrics"]["fake_quant"]["wikitext2"]["ppl"]
        r["float_torch_ppl"] = rec["metrics"].get("pretrain", {}).get("wikitext2", {}).get("ppl")
    results[name] = r; save()
    print(name, {k: r.get(k) for k in ("stored_bytes", "idle_rss_bytes", "peak_rss_bytes", "peak_above_idle_bytes",
          "prefill_tokens_per_s", "decode_tokens_per_s", "wikitext2_ppl", "fake_quant_ppl")}, flush=True)
