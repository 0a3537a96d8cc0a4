"""Deployed integer models against the bfloat16 baseline on this machine (Track 2 quantities).

    python benchmarks/deploy_speed.py                      # both architectures, bf16 / W8A8 / W4A8 / W8A16 / W4A16
    python benchmarks/deploy_speed.py --gemm-only          # the raw GEMM micro-benchmark only
    python benchmarks/deploy_speed.py --threads 2 --runs 30 --json out.json

For each architecture (the embedded random models carry the exact SmolLM2-135M and Qwen2.5-0.5B configs;
speed does not depend on the weights) it loads the model in bfloat16, saves the bf16 baseline checkpoint,
quantizes with RTN (W8A8: 8-bit symmetric per-channel weights, 4-bit for W4A8; 8-bit symmetric per-token
dynamic activations; speed does not depend on the method) and saves the packed checkpoints. Each
checkpoint is then measured in its own fresh process (``llmc_slm.tracks.inference``: size, peak memory,
prefill TPS at 1 x 128 with 10 warm-up + 100 timed passes, decode TPS, MACs), all on the same WikiText-2
input, and the table gives the ratios against bf16 measured in the same run.

Then all checkpoints of the architecture are loaded together in one more fresh process and timed in
alternation (``llmc_slm.tracks.speed_ab``: ``--rounds`` rounds of ``--passes`` passes each, the order
rotating): the per-round speed-ups against bf16 cancel the machine's drift, which on the shared 2-core VM
moves separate-process ratios by 2x (Qwen2.5-0.5B W8A8 / bf16 measured 1.54x, 0.68x and 1.28x in three
runs). Their median and quartiles are the ratios to quote. ``bf16_packed`` (on by default) is the float
model with its linears' weights pre-packed for oneDNN once (``llmc.quant.prepacked_linear``), as the
integer models' int8 weights are, and ``w8a8_packed`` is the W8A8 model with its float lm_head pre-packed
the same way: the speed-up of ``w8a8_packed`` over ``bf16_packed`` is what integer arithmetic itself buys,
the rest of the speed-up over stock bf16 is weight pre-packing.

``--gemm`` (or ``--gemm-only``) first times the models' linear shapes alone: bf16 ``F.linear`` against
int8 ``torch._int_mm`` and oneDNN's pre-packed int8 linear, and the whole ``IntLinear`` call (activation
quantization and rescale included; and with 4-bit weights unpacked at each call), at M = 128 (prefill)
and M = 1 (decode).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

MODELS = ("smollm2-135m-random", "qwen2.5-0.5b-random")
CONFIGS = {"bf16": None, "w8a8": 8, "w4a8": 4, "w4a8_call": 4, "w8a16": 8, "w4a16": 4}
# w4a8_call: the W4A8 checkpoint with its 4-bit weights kept nibble-packed in memory, unpacked at each call;
# w8a16 / w4a16: weight-only (float activations), the IntLinear weight_only kernels: 8-bit symmetric per
# channel, 4-bit asymmetric in groups of 64 (a width that divides SmolLM2's 576 and Qwen's 896)
WEIGHT_ONLY = {"w8a16": ["--quant.weight.granularity", "per_channel"],
               "w4a16": ["--quant.weight.granularity", "per_group", "--quant.weight.group_size", "64",
                         "--quant.weight.symmetric", "false"]}


# ------------------------------------------------------------------------------------------ GEMMs
def _best_ms(fn, n: int, reps: int = 5) -> float:
    for _ in range(2):
        fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n * 1e3)
    return best


def linear_shapes(config) -> list[tuple[str, int, int]]:
    h, f = config.hidden_size, config.intermediate_size
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    hd = getattr(config, "head_dim", None) or h // heads
    return [("q_proj", h, heads * hd), ("k_proj/v_proj", h, kv * hd), ("o_proj", heads * hd, h),
            ("gate/up_proj", h, f), ("down_proj", f, h), ("lm_head (stays bf16)", h, config.vocab_size)]


def gemm_bench(model_names, threads: int) -> list[dict]:
    import torch
    import torch.nn.functional as F
    from torch import nn
    from transformers import AutoConfig
    from llmc.quant.fake_linear import FakeQuantLinear
    from llmc.quant.int_linear import IntLinear, onednn_available
    from llmc.quant.quantizer import Quantizer
    from llmc_slm.zoo import CONFIG_DIR, RANDOM

    torch.set_num_threads(threads)
    rows = []
    for name in model_names:
        cfg = json.loads((CONFIG_DIR / RANDOM[name].config_file).read_text())
        config = AutoConfig.for_model(**{k: v for k, v in cfg.items() if not k.startswith("_")})
        for layer, k, n in linear_shapes(config):
            for m in (128, 1):
                g = torch.Generator().manual_seed(0)
                x = torch.randn(m, k, generator=g, dtype=torch.float32).to(torch.bfloat16)
                w = (torch.randn(n, k, generator=g) * 0.02).to(torch.bfloat16)
                a = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=g)
                wq = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
                w_kn = wq.t()      # column-major [K, N], as IntLinear holds it (_int_mm is 5-7x slower on a row-major one)
                reps = 3 if n > 100_000 else 20
                row = {"model": name, "layer": layer, "M": m, "K": k, "N": n,
                       "bf16_ms": _best_ms(lambda: F.linear(x, w), reps),
                       "int_mm_ms": _best_ms(lambda: torch._int_mm(a, w_kn), reps)}
                if onednn_available():
                    wp = torch.ops.onednn.qlinear_prepack(wq, None)
                    au = a.view(torch.uint8) ^ 0x80
                    sw, zp = torch.ones(n), torch.zeros(n, dtype=torch.int32)
                    row["onednn_ms"] = _best_ms(lambda: torch.ops.onednn.qlinear_pointwise(
                        au, 1.0, 128, wp, sw, zp, None, 1.0, 0, torch.float32, "none", [], ""), reps)
                if not layer.startswith("lm_head"):
                    lin = nn.Linear(k, n, bias=False, dtype=torch.bfloat16)
                    lin.weight.data.copy_(w)
                    fq = FakeQuantLinear(lin, Quantizer(bit=8, granularity="per_channel"),
                                         Quantizer(bit=8, granularity="per_token"))
                    # share_act_quant=False: every call quantizes its input (x is the same object each time)
                    il = IntLinear.from_fake(fq, share_act_quant=False)
                    row["intlinear_ms"] = _best_ms(lambda: il(x), reps)
                    row["intlinear_backend"] = il.backend
                    fq4 = FakeQuantLinear(lin, Quantizer(bit=4, granularity="per_channel"),
                                          Quantizer(bit=8, granularity="per_token"))
                    il4 = IntLinear.from_fake(fq4, unpack="call", share_act_quant=False)
                    row["intlinear_w4_call_ms"] = _best_ms(lambda: il4(x), reps)
                best_int = min(row.get("onednn_ms", float("inf")), row["int_mm_ms"])
                row["gemm_speedup"] = row["bf16_ms"] / best_int
                if "intlinear_ms" in row:
                    row["layer_speedup"] = row["bf16_ms"] / row["intlinear_ms"]
                rows.append(row)
                print(_gemm_line(row), flush=True)
    return rows


def _gemm_line(r: dict) -> str:
    s = (f"{r['model']:<20} {r['layer']:<22} M={r['M']:<4} K={r['K']:<5} N={r['N']:<7} bf16 {r['bf16_ms']:8.3f} ms"
         f" | _int_mm {r['int_mm_ms']:8.3f}")
    if "onednn_ms" in r:
        s += f" | onednn {r['onednn_ms']:8.3f}"
    s += f" | GEMM x{r['gemm_speedup']:.2f}"
    if "intlinear_ms" in r:
        s += f" | IntLinear {r['intlinear_ms']:.3f} ({r['intlinear_backend']}) x{r['layer_speedup']:.2f}"
        s += f" | W4 unpack-per-call {r['intlinear_w4_call_ms']:.3f}"
    return s


# ---------------------------------------------------------------------------------------- models
def prepare_checkpoints(name: str, work: Path, configs, seq_len: int):
    """bf16 baseline + packed RTN checkpoints of one architecture; returns ({config: dir}, ids, input info)."""
    import torch
    from llmc.config import load_config
    from llmc.models.loading import load_model, resolve_model_source
    from llmc.quant.packed import save_packed_model
    from llmc.pipeline import quantize_model
    from llmc_slm.tracks.inference import save_baseline_checkpoint
    from llmc_slm.tracks.loading import fixed_input_ids

    source = resolve_model_source(name)
    dirs, ids, info = {}, None, None
    for cfg_name in configs:
        if cfg_name == "w4a8_call" and "w4a8" in dirs:
            dirs[cfg_name] = dirs["w4a8"]
            continue
        out = work / name / cfg_name
        adapter = load_model(source, dtype=torch.bfloat16, seed=42)
        if ids is None:
            ids, info = fixed_input_ids(adapter.tokenizer, seq_len)
        t = time.perf_counter()
        bits = CONFIGS[cfg_name]
        if bits is None:
            save_baseline_checkpoint(adapter.model, adapter.tokenizer, out, torch.bfloat16)
        else:
            if cfg_name in WEIGHT_ONLY:
                args = ["--quant.weight.bit", str(bits), *WEIGHT_ONLY[cfg_name]]
            else:
                args = ["--quant.weight.bit", str(bits), "--quant.weight.symmetric", "true",
                        "--quant.weight.granularity", "per_channel", "--quant.act.bit", "8",
                        "--quant.act.symmetric", "true", "--quant.act.granularity", "per_token"]
            cfg = load_config(None, ["--quant.method", "RTN", *args])
            quantize_model(adapter, cfg)
            save_packed_model(adapter, cfg, out)
        print(f"  {name} {cfg_name}: checkpoint {out} ({time.perf_counter() - t:.1f} s)", flush=True)
        dirs[cfg_name] = out
        del adapter
    return dirs, ids, info


def fmt_bytes(n) -> str:
    return f"{n / 2**20:,.1f} MiB"


def print_table(rows: list[dict]) -> None:
    from tabulate import tabulate
    table = []
    for r in rows:
        b = r["baseline"]
        p = r["profile"]
        ratio = (lambda k, inv=False: (b[k] / p[k] if inv else p[k] / b[k]) if p.get(k) and b.get(k) else None)
        table.append([
            r["model"], r["config"], fmt_bytes(p["size"]), f"{ratio('size', True):.2f}x",
            fmt_bytes(p["peak_mem"]), f"{ratio('peak_mem', True):.2f}x",
            fmt_bytes(p["peak_mem_above_runtime"]) if p.get("peak_mem_above_runtime") else "-",
            f"{p['tps']:,.0f}", f"{ratio('tps'):.3f}x",
            f"{p['prefill_last_logit_tps']:,.0f}" if p.get("prefill_last_logit_tps") else "-",
            f"{ratio('prefill_last_logit_tps'):.3f}x" if p.get("prefill_last_logit_tps") else "-",
            f"{p['decode_tps']:,.1f}" if p.get("decode_tps") else "-",
            f"{ratio('decode_tps'):.2f}x" if p.get("decode_tps") else "-",
            f"{p['macs'] / 1e9:.2f}G" if p.get("macs") else "-",
            f"{p['macs_calflops'] / 1e9:.2f}G" if p.get("macs_calflops") is not None else "-",
            f"{p['params_calflops'] / 1e6:.2f}M" if p.get("params_calflops") is not None else "-",
            f"{r['scores']['measured']['slmq_infer']:.1f}" if r.get("scores") else "-",
            f"{r['scores']['paper_compatible']['slmq_infer']:.1f}"
            if r.get("scores", {}).get("paper_compatible") else "-",
        ])
    print(tabulate(table, headers=["model", "config", "size", "S/S^c", "peak mem", "M/M^c", "mem-runtime",
                                   "prefill TPS", "vs bf16", "prefill TPS last-logit", "vs bf16",
                                   "decode TPS", "vs bf16", "MACs (all)", "MACs calflops", "params calflops",
                                   "SLMQ_infer", "paper-compat."], tablefmt="github"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--decode-runs", type=int, default=3)
    ap.add_argument("--last-logit-runs", type=int, default=20)
    ap.add_argument("--backend", default="auto", choices=("auto", "onednn", "int_mm"))
    ap.add_argument("--no-macs", action="store_true")
    ap.add_argument("--gemm", action="store_true", help="also run the raw GEMM micro-benchmark")
    ap.add_argument("--gemm-only", action="store_true")
    ap.add_argument("--rounds", type=int, default=20, help="rounds of the interleaved comparison (0: skip it)")
    ap.add_argument("--passes", type=int, default=3, help="passes per model and round in the interleaved comparison")
    ap.add_argument("--no-prepacked-baseline", action="store_true",
                    help="leave bf16_packed (the float model with pre-packed weights) out of the interleaved comparison")
    ap.add_argument("--goal", type=float, default=1.3, help="W8A8 / bf16 prefill speed-up to check (Qwen2.5-0.5B)")
    ap.add_argument("--no-separate", action="store_true",
                    help="skip the separate fresh-process profiles (size, memory, TPS): interleaved timing only")
    ap.add_argument("--workdir", help="keep the checkpoints here (default: a temporary folder)")
    ap.add_argument("--json", help="write every measurement here")
    args = ap.parse_args(argv)

    import torch
    from llmc.utils import cpu_name
    print(f"torch {torch.__version__}, {cpu_name()}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, threads {args.threads}", flush=True)
    out = {"threads": args.threads, "cpu": cpu_name(), "load_average_start": os.getloadavg()}
    if args.gemm or args.gemm_only:
        print("\nraw GEMMs (best of 5 x n calls):", flush=True)
        out["gemm"] = gemm_bench(args.models, args.threads)
        if args.gemm_only:
            _write(args.json, out)
            return 0

    from llmc_slm.tracks.inference import infer_scores, profile_inference
    rows, interleaved = [], {}
    with tempfile.TemporaryDirectory(prefix="slmq_deploy_") as tmp:
        work = Path(args.workdir or tmp)
        for name in args.models:
            print(f"\n{name}: preparing checkpoints", flush=True)
            configs = ["bf16"] + [c for c in CONFIGS if c in args.configs and c != "bf16"]
            dirs, ids, info = prepare_checkpoints(name, work, configs, args.seq_len)
            if args.rounds:
                interleaved[name] = run_interleaved(name, dirs, ids, info, args)
            if args.no_separate:
                continue
            base = None
            for cfg_name, path in dirs.items():
                t = time.perf_counter()
                prof = profile_inference(path, threads=args.threads, seq_len=args.seq_len, warmup=args.warmup,
                                         runs=args.runs, decode_tokens=args.decode_tokens,
                                         decode_runs=args.decode_runs, last_logit_runs=args.last_logit_runs,
                                         input_ids=ids, input_source=info["source"], backend=args.backend,
                                         unpack="call" if cfg_name == "w4a8_call" else "load",
                                         macs=not args.no_macs)
                print(f"  {name} {cfg_name}: {prof['tps']:,.0f} prefill tok/s, decode "
                      f"{prof.get('decode_tps') or 0:,.1f} tok/s, peak {fmt_bytes(prof['peak_mem'])} "
                      f"({time.perf_counter() - t:.0f} s)", flush=True)
                if cfg_name == "bf16":
                    base = prof
                row = {"model": name, "config": cfg_name, "checkpoint": str(path), "profile": prof, "baseline": base,
                       "input": info}
                if cfg_name != "bf16" and not args.no_macs:
                    row["scores"] = infer_scores(base, prof)
                rows.append(row)
    out["rows"] = [{k: v for k, v in r.items() if k != "baseline"} for r in rows]
    out["interleaved"] = interleaved
    out["load_average_end"] = os.getloadavg()
    print(f"\nthreads {args.threads}; load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"ratios are against bf16 measured in this run\n")
    if rows:
        print("Separate fresh processes, one after the other (sizes and memory; their TPS ratios drift with the "
              "machine):")
        print_table(rows)
    if interleaved:
        print("\nInterleaved in one process (median speed-up over rounds [quartiles], min-max):")
        print_interleaved(interleaved)
        out["goal"] = goal_verdict(interleaved, args.goal)
        if out["goal"]:
            print("\n" + out["goal"]["line"])
    _write(args.json, out)
    return 0


def run_interleaved(name: str, dirs: dict, ids, info: dict, args) -> dict:
    """All checkpoints of one architecture timed in alternation in one fresh process."""
    from llmc_slm.tracks.speed_ab import compare_speed
    models = {c: p for c, p in dirs.items() if c != "w4a8_call"}     # unpack-per-call: separate runs only
    prepack = {}
    if not args.no_prepacked_baseline:
        # the float model with pre-packed weights, and W8A8 with its float lm_head pre-packed too: their ratio is
        # what integer arithmetic buys when both sides pre-pack their weights
        prepack = {"bf16_packed": dirs["bf16"], **({"w8a8_packed": dirs["w8a8"]} if "w8a8" in dirs else {})}
    print(f"  {name}: interleaved timing of {', '.join(list(models) + list(prepack))} "
          f"({args.rounds} rounds x {args.passes} passes)", flush=True)
    t = time.perf_counter()
    result = compare_speed(models, prepack=prepack, baseline="bf16", threads=args.threads, rounds=args.rounds,
                           passes=args.passes, seq_len=args.seq_len, input_ids=ids, input_source=info["source"])
    print(f"  {name}: interleaved timing done ({time.perf_counter() - t:.0f} s)", flush=True)
    return result


def print_interleaved(interleaved: dict) -> None:
    from tabulate import tabulate
    table = []
    for model, res in interleaved.items():
        for cfg, modes in res["summary"].items():
            row = [model, cfg]
            for mode in ("prefill", "prefill_last_logit"):
                m = modes[mode]
                row += [f"{m['tps_median']:,.0f}",
                        f"{m['speedup_median']:.2f}x [{m['speedup_q1']:.2f}-{m['speedup_q3']:.2f}] "
                        f"({m['speedup_min']:.2f}-{m['speedup_max']:.2f})"]
            table.append(row)
    print(tabulate(table, headers=["model", "config", "prefill TPS", "vs bf16", "last-logit TPS", "vs bf16"],
                   tablefmt="github"))
    for model, res in interleaved.items():
        print(f"{model}: {res['rounds']} rounds x {res['passes']} passes, {res['threads']} thread(s)")


def goal_verdict(interleaved: dict, goal: float) -> dict | None:
    """The issue's speed goal: Qwen2.5-0.5B W8A8 prefill >= goal x bf16, by the interleaved median."""
    res = interleaved.get("qwen2.5-0.5b-random")
    if not res or "w8a8" not in res["summary"]:
        return None
    m = res["summary"]["w8a8"]["prefill"]
    met = m["speedup_median"] >= goal
    line = (f"Qwen2.5-0.5B W8A8 prefill (1 x {res['tokens_per_pass']}, full logits) vs bf16: median "
            f"{m['speedup_median']:.2f}x over {m['rounds']} interleaved rounds (quartiles {m['speedup_q1']:.2f}-"
            f"{m['speedup_q3']:.2f}); goal >= {goal:.2f}x: {'met' if met else 'NOT met'}")
    verdict = {"met": met, "speedup_median": m["speedup_median"], "goal": goal}
    if "bf16_packed" in res["summary"]:
        import statistics
        p = res["summary"]["bf16_packed"]["prefill"]["speedup_median"]
        t = res["times"]
        w8 = "w8a8_packed" if "w8a8_packed" in t else "w8a8"
        over_packed = statistics.median(a / b for a, b in zip(t["bf16_packed"]["prefill"], t[w8]["prefill"]))
        verdict["speedup_over_prepacked_bf16"] = over_packed
        line += (f". Pre-packing the bf16 weights alone gives {p:.2f}x; {w8} against that pre-packed bf16: "
                 f"{over_packed:.2f}x (what integer arithmetic itself buys)")
    verdict["line"] = line
    return verdict


def _write(path, data) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2, default=str))
        print(f"\nwrote {path}")


if __name__ == "__main__":
    sys.exit(main())
