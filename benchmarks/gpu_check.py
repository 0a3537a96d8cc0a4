"""What only a CUDA machine can show: the engine's CUDA paths run and agree with the CPU, and GPU timings.

    python benchmarks/gpu_check.py --json out.json              # on a machine with a GPU (device tool)
    python benchmarks/gpu_check.py --device cpu --quick         # the same code paths, on the CPU (a dry run)

CI never has a GPU, and the unit tests run on the CPU; this script is the check to run when a session is
lent one (``results/reference/gpu_check/README.md``: how to run it there, and what it found). Real weights
cannot travel to that machine (the lent machine reaches no package index and takes 64 MiB of files), so every
model here is random: the tiny twins of the unit tests for agreement, the exact SmolLM2-135M and Gemma-3-270M
architectures (``llmc_slm/model_configs``) for speed, which does not depend on the weights.

1. ``int_mm``: :func:`llmc.quant.int_linear.int_mm` on the device against an exact int64 product on the CPU,
   over shapes that include some cuBLASLt's int8 GEMM refuses unpadded (M <= 16, K or N not a multiple of
   8), with the weight operand row-major and column-major: equal, bit for bit; and whether ``torch._int_mm``
   itself takes each layout unpadded.
2. ``methods``: each method (RTN, SmoothQuant, GPTQ, OmniQuant, SpinQuant; R1 off on Gemma-3, whose
   post-norms refuse it) at W8A8 and W4A8 on a tiny random Llama and Gemma-3, quantized once on the CPU and
   once on the device from the same weights and calibration ids: the fake-quant logits' relative difference
   (median and largest ``|a - b| / max |a|``) and top-1 agreement, then the device's model deployed in integer form
   (:func:`llmc.deploy.deploy_integer`, ``torch._int_mm``) against its own fake-quant logits.
3. ``speed``: prefill (1 x 128, 1 x 2048) and decode (32 tokens after 128) of the exact architectures on
   the device: float32, bfloat16 and float16 against RTN W8A8 and W4A8 deployed in integer form (float16
   around the integer linears on a GPU, bfloat16 on a CPU), as ratios against bfloat16 measured in the same run
   (:func:`llmc_slm.tracks.inference.measure_model`).

Each check prints one line; ``--json`` writes every figure. Exit status 1 if an agreement check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

INT_MM_SHAPES = [(1, 7, 5), (1, 640, 2048), (5, 64, 8), (16, 576, 1536), (17, 640, 256), (33, 2048, 640),
                 (64, 64, 48), (64, 64, 128), (48, 64, 64), (128, 576, 1536), (128, 640, 2048), (7, 1000, 13)]
# the methods as their configs run them, shrunk to the tiny model (a few steps / epochs)
METHODS = {
    "RTN": [],
    "SmoothQuant": [],
    "GPTQ": [],
    "OmniQuant": ["--quant.special.epochs", "2"],
    "SpinQuant": ["--quant.special.learn_rotations", "false", "--quant.special.weight_algo", "rtn"],
}
BITS = {"w8a8": "8", "w4a8": "4"}
FAMILIES = ("llama", "gemma3_text")
# agreement limits: the fake-quant model on two devices (rounding ties and float sums in another order can
# move a code by one step; a calibrated method can then drift): top-1 agreement; integer against fake-quant
# on one device: the unit tests' whole-model limits (tests/test_int_linear.py: median relative difference
# below 1e-5, largest below 1e-2, since an activation within float rounding of a code boundary can take
# the neighbouring code and propagate)
CROSS_DEVICE_TOP1 = 0.95
INT_VS_FAKE_MEDIAN, INT_VS_FAKE_MAX = 1e-5, 1e-2


def _raw_int_mm(a: torch.Tensor, b: torch.Tensor, device: torch.device) -> str:
    """Whether ``torch._int_mm`` itself takes these operands (no padding, b's layout kept) on the device."""
    try:
        torch._int_mm(a.to(device), b.to(device))
        return "ok"
    except RuntimeError as e:
        return str(e).splitlines()[0][:120]


def check_int_mm(device: torch.device) -> list[dict]:
    from llmc.quant.int_linear import int_mm
    rows = []
    g = torch.Generator().manual_seed(0)
    for m, k, n in INT_MM_SHAPES:
        a = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=g)
        b = torch.randint(-128, 128, (k, n), dtype=torch.int8, generator=g)
        expected = (a.long() @ b.long()).int()
        column_major = b.t().contiguous().t()          # IntLinear's layout: the transpose of [out, in] codes
        got = [int_mm(a.to(device), x.to(device)).cpu() for x in (b, column_major)]
        rows.append({"shape": [m, k, n], "equal": all(torch.equal(g_, expected) for g_ in got),
                     "raw_int_mm": {"row_major": _raw_int_mm(a, b, device),
                                    "column_major": _raw_int_mm(a, column_major, device)}})
    return rows


def _cfg(method: str, bits: str, family: str):
    from test_norm_contract import cfg_for
    extra = list(METHODS[method])
    if method == "SpinQuant" and family == "gemma3_text":
        extra += ["--quant.special.r1", "false"]
    return cfg_for(method, "--quant.weight.bit", BITS[bits], *extra)


def _quantized_logits(family: str, method: str, bits: str, device: torch.device, ids, calib):
    from conftest import tiny_adapter
    from llmc.data.calib import CalibData
    from llmc.pipeline import quantize_model
    torch.manual_seed(0)
    adapter = tiny_adapter(family)
    adapter.model.to(device)
    quantize_model(adapter, _cfg(method, bits, family), CalibData(calib, {}))
    with torch.no_grad():
        return adapter, adapter.model(input_ids=ids.to(device)).logits.float().cpu()


def _rel(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """median and largest |a - b| / max |a|"""
    rel = (a - b).abs() / a.abs().max()
    return rel.median().item(), rel.max().item()


def check_methods(device: torch.device, quick: bool) -> list[dict]:
    from llmc.deploy import deploy_integer
    g = torch.Generator().manual_seed(0)
    calib = torch.randint(0, 256, (4, 16), generator=g)
    ids = torch.randint(0, 256, (2, 24), generator=g)
    rows = []
    for family in FAMILIES:
        for method in (["RTN", "SmoothQuant"] if quick else METHODS):
            for bits in BITS:
                t0 = time.perf_counter()
                _, on_cpu = _quantized_logits(family, method, bits, torch.device("cpu"), ids, calib)
                adapter, on_dev = _quantized_logits(family, method, bits, device, ids, calib)
                deploy_integer(adapter.model)
                with torch.no_grad():
                    integer = adapter.model(input_ids=ids.to(device)).logits.float().cpu()
                (cross_median, cross_max), (int_median, int_max) = _rel(on_cpu, on_dev), _rel(on_dev, integer)
                rows.append({"family": family, "method": method, "bits": bits,
                             "cross_device_median": cross_median, "cross_device_max": cross_max,
                             "cross_device_top1": (on_cpu.argmax(-1) == on_dev.argmax(-1)).float().mean().item(),
                             "int_vs_fake_median": int_median, "int_vs_fake_max": int_max,
                             "seconds": time.perf_counter() - t0})
    return rows


def _architecture(name: str):
    from transformers import AutoConfig, AutoModelForCausalLM
    from llmc.models.base import make_adapter
    from llmc.models.families import adapter_for_hf_type
    data = json.loads((ROOT / "llmc_slm" / "model_configs" / f"{name}.json").read_text())
    data = {k: v for k, v in data.items() if not k.startswith("_")}
    config = AutoConfig.for_model(data.pop("model_type"), **data)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    return make_adapter(adapter_for_hf_type(config.model_type), model, tokenizer=None)


def check_speed(device: torch.device, quick: bool) -> list[dict]:
    from llmc.config import load_config
    from llmc.deploy import deploy_integer, to_compute_dtype
    from llmc.pipeline import quantize_model
    from llmc_slm.tracks.inference import measure_model
    runs = 5 if quick else 50
    compute_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16   # around the integer linears
    rows = []
    for name in (["smollm2-135m"] if quick else ["smollm2-135m", "gemma-3-270m"]):
        settings = {"float32": None, "bfloat16": None, "float16": None, "w8a8": "8", "w4a8": "4"}
        for setting, wbit in settings.items():
            adapter = _architecture(name)
            if wbit is None:
                model = adapter.model.to(getattr(torch, setting))
            else:
                cfg = load_config(None, ["--quant.method", "RTN", "--quant.weight.bit", wbit,
                                         "--quant.weight.granularity", "per_channel", "--quant.act.bit", "8",
                                         "--quant.act.granularity", "per_token"])
                quantize_model(adapter, cfg, None)
                model = to_compute_dtype(deploy_integer(adapter.model), compute_dtype)
            model.to(device)
            vocab = model.config.vocab_size
            for seq in ((128,) if quick else (128, 2048)):
                ids = torch.randint(0, vocab, (1, seq), generator=torch.Generator().manual_seed(1)).to(device)
                m = measure_model(model, ids, warmup=3, runs=runs, decode_tokens=32 if seq == 128 else 0,
                                  decode_runs=3, last_logit_runs=0, macs=False)
                rows.append({"model": name, "setting": setting, "seq_len": seq, "tps": m["tps"],
                             "decode_tps": m["decode_tps"], "peak_mem": m["peak_mem"],
                             "memory_kind": m["memory_kind"]})
            del model, adapter
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for row in rows:   # ratios against bfloat16 of the same model and length, measured in this run
        base = next(r for r in rows if r["model"] == row["model"] and r["seq_len"] == row["seq_len"]
                    and r["setting"] == "bfloat16")
        row["tps_vs_bf16"] = row["tps"] / base["tps"]
        if row["decode_tps"] and base["decode_tps"]:
            row["decode_vs_bf16"] = row["decode_tps"] / base["decode_tps"]
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="fewer methods, one model, few timed passes")
    p.add_argument("--only", nargs="*", choices=["int_mm", "methods", "speed"])
    p.add_argument("--json", help="write every figure here")
    args = p.parse_args(argv)
    from llmc import catalog
    catalog.load()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    out = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "threads": torch.get_num_threads()}
    ok = True
    only = set(args.only or ["int_mm", "methods", "speed"])
    if "int_mm" in only:
        out["int_mm"] = check_int_mm(device)
        bad = [r["shape"] for r in out["int_mm"] if not r["equal"]]
        ok &= not bad
        print(f"int_mm: {len(out['int_mm']) - len(bad)}/{len(out['int_mm'])} shapes exact" +
              (f"; NOT exact: {bad}" if bad else ""), flush=True)
        for r in out["int_mm"]:
            print(f"  raw torch._int_mm {r['shape']}: {r['raw_int_mm']}", flush=True)
    if "methods" in only:
        out["methods"] = check_methods(device, args.quick)
        for r in out["methods"]:
            good = (r["cross_device_top1"] >= CROSS_DEVICE_TOP1 and r["int_vs_fake_median"] < INT_VS_FAKE_MEDIAN
                    and r["int_vs_fake_max"] < INT_VS_FAKE_MAX)
            ok &= good
            print(f"{r['family']:12s} {r['method']:12s} {r['bits']}: cpu vs {device.type} rel median "
                  f"{r['cross_device_median']:.1e} max {r['cross_device_max']:.1e} top-1 {r['cross_device_top1']:.3f}; "
                  f"integer vs fake median {r['int_vs_fake_median']:.1e} max {r['int_vs_fake_max']:.1e} "
                  f"({r['seconds']:.1f} s){'' if good else '  FAILED'}", flush=True)
    if "speed" in only:
        out["speed"] = check_speed(device, args.quick)
        for r in out["speed"]:
            dec = f", decode {r['decode_tps']:.0f} tok/s ({r.get('decode_vs_bf16', 0):.2f}x)" if r["decode_tps"] else ""
            print(f"{r['model']:13s} {r['setting']:9s} 1x{r['seq_len']}: prefill {r['tps']:.0f} tok/s "
                  f"({r['tps_vs_bf16']:.2f}x bf16){dec}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    print("gpu_check: " + ("all agreement checks hold" if ok else "SOME AGREEMENT CHECKS FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
