"""Fake-quant forwards against the float forward of the same model, in one process (Track 1 cost).

    python benchmarks/fake_quant_speed.py                               # bf16 + fp32, 1 x 2048 and 1 x 512
    python benchmarks/fake_quant_speed.py --dtypes fp32 --tokens 512 --rounds 9 --out fq.json
    python benchmarks/fake_quant_speed.py --compare-ops                 # + W8A8 with the fused kernel off

The evaluation of a fake-quant model (``FakeQuantLinear``: weights quantized once, activations fake-quantized
per call) should cost about what the float model costs; the goal is a forward within 1.25x of the float
forward. For each dtype the embedded SmolLM2-135M (``--model``) is loaded as the float baseline and as
fake-quant copies made by the pipeline (``llmc.pipeline.quantize_model``) with RTN: 8- or 4-bit symmetric
per-channel weights and 8-bit dynamic per-token activations:

* ``w8a8``, ``w4a8``: symmetric activations (RTN's and SmoothQuant's activation quantizer; SmoothQuant's
  smoothing is folded into the weights, so its forward is this one);
* ``w4a8_asym_had``: asymmetric activations with an online Hadamard transform before every down_proj
  (SpinQuant's deployed forward: R4 is applied at run time; the weights are not rotated here since speed
  does not depend on their values);
* ``w8a8_ops`` (``--compare-ops``): the ``w8a8`` model with the fused fake-quant kernel turned off, i.e.
  the PyTorch-op path (``Quantizer.fake_quant``) that the kernel replaces.

All models of a dtype are timed in alternation: ``--rounds`` rounds, each one forward of each model over
the same ``1 x T`` random tokens (no KV cache), the order rotating every round; each round's ratio
``fake / float`` cancels the shared machine's drift, and their median and quartiles are reported with the
verdict against the goal. Threads are pinned (``--threads``) and reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

GOAL = 1.25
DTYPES = {"bf16": "bfloat16", "fp32": "float32"}
VARIANTS = {   # name: (weight bits, symmetric activations, online Hadamard before down_proj)
    "w8a8": (8, True, False),
    "w4a8": (4, True, False),
    "w4a8_asym_had": (4, False, True),
}


def quartiles(xs):
    xs = sorted(xs)
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q1, med, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, med, q3


def build_variant(model_name: str, dtype, wbit: int, act_sym: bool, hadamard: bool):
    from llmc.config import load_config
    from llmc.models.loading import load_model, resolve_model_source
    from llmc.pipeline import quantize_model
    from llmc.quant.fake_linear import FakeQuantLinear
    from llmc.quant.transforms import OnlineHadamard

    adapter = load_model(resolve_model_source(model_name), dtype=dtype)
    cfg = load_config(None, ["--quant.method", "RTN", "--quant.weight.bit", str(wbit),
                             "--quant.weight.granularity", "per_channel", "--quant.weight.symmetric", "true",
                             "--quant.act.bit", "8", "--quant.act.granularity", "per_token",
                             "--quant.act.symmetric", "true" if act_sym else "false"])
    quantize_model(adapter, cfg)
    model = adapter.model.eval()
    n_fq = 0
    for name, mod in model.named_modules():
        if isinstance(mod, FakeQuantLinear):
            n_fq += 1
            if hadamard and name.endswith("down_proj"):
                mod.input_transform = OnlineHadamard(mod.in_features)
    if not n_fq:
        raise RuntimeError("no FakeQuantLinear in the quantized model")
    return model


def run(args) -> dict:
    import torch
    from llmc.models.loading import load_model, resolve_model_source
    from llmc.quant import quantizer as quantizer_module
    from llmc.quant.cpu_kernels import fused_kernels, fused_kernels_status

    torch.set_num_threads(args.threads)
    fused_kernels()
    result = {"model": args.model, "threads": torch.get_num_threads(), "rounds": args.rounds,
              "fused_kernels": fused_kernels_status(), "torch": torch.__version__, "goal": GOAL, "rows": []}
    print(f"model {args.model}, threads {torch.get_num_threads()}, rounds {args.rounds}, "
          f"fused kernels: {fused_kernels_status()}", flush=True)
    real_fused = quantizer_module._fused_kernels
    for dname in args.dtypes:
        dtype = getattr(torch, DTYPES[dname])
        models = {"float": load_model(resolve_model_source(args.model), dtype=dtype).model.eval()}
        for v in args.variants:
            models[v] = build_variant(args.model, dtype, *VARIANTS[v])
        if args.compare_ops:
            models["w8a8_ops"] = models["w8a8"] if "w8a8" in models else build_variant(args.model, dtype, 8, True, False)

        for T in args.tokens:
            ids = torch.randint(0, 1000, (1, T), generator=torch.Generator().manual_seed(0))

            def forward(name):
                quantizer_module._fused_kernels = (lambda: None) if name.endswith("_ops") else real_fused
                try:
                    t = time.perf_counter()
                    with torch.inference_mode():
                        models[name](input_ids=ids, use_cache=False)
                    return time.perf_counter() - t
                finally:
                    quantizer_module._fused_kernels = real_fused

            names = list(models)
            for name in names:          # warm-up
                forward(name)
            times = {n: [] for n in names}
            for r in range(args.rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                for name in order:
                    times[name].append(forward(name))
            base = times["float"]
            fq, fm, f3 = quartiles(base)
            print(f"\n{dname} 1 x {T}: float forward median {fm * 1e3:.0f} ms (IQR {fq * 1e3:.0f}-{f3 * 1e3:.0f})")
            print(f"  {'variant':<16}{'median ms':>10}{'fake/float':>12}{'q1':>8}{'q3':>8}   verdict (<= {GOAL}x)")
            for name in names[1:]:
                ratios = [t / b for t, b in zip(times[name], base)]
                q1, med, q3 = quartiles(ratios)
                verdict = "meets" if med <= GOAL else "misses"
                print(f"  {name:<16}{statistics.median(times[name]) * 1e3:>10.0f}{med:>12.3f}{q1:>8.3f}{q3:>8.3f}   {verdict}")
                result["rows"].append({"dtype": dname, "tokens": T, "variant": name,
                                       "float_ms": [b * 1e3 for b in base], "fake_ms": [t * 1e3 for t in times[name]],
                                       "ratios": ratios, "ratio_median": med, "ratio_q1": q1, "ratio_q3": q3,
                                       "meets_goal": med <= GOAL})
        del models
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=list(DTYPES))
    p.add_argument("--tokens", nargs="+", type=int, default=[2048, 512])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--compare-ops", action="store_true", help="also time W8A8 with the fused kernel off")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, help="write the measurements as JSON")
    args = p.parse_args(argv)
    result = run(args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
