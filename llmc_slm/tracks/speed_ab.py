"""Interleaved speed comparison of several checkpoints in one fresh process (Track 2's speed ratios on a
noisy machine).

    python -m llmc_slm.tracks.speed_ab --model bf16=DIR --model w8a8=PACKED_DIR [--prepack bf16_packed=DIR]
                                       --baseline bf16 --rounds 20 --passes 3 --out ab.json

Why: Track 2's protocol times each checkpoint in its own fresh process (needed for its peak memory), one
after the other. On a shared VM the machine's speed drifts by 2x over minutes (on the 2-core development
VM the same bf16 Qwen2.5-0.5B pass took 314-559 ms within one minute), so a ratio of two such timings
can land anywhere: W8A8 / bf16 prefill on Qwen2.5-0.5B measured 1.54x, 0.68x and 1.28x in three runs.
Here all models are loaded in one process and timed in alternation: each round times ``passes`` forward
passes of every model (the order rotates between rounds), so each model's time in a round is taken
seconds apart from the others' under the same machine state. The per-round ratio
``t_baseline / t_model`` (speed-up, > 1 is faster) then cancels the drift; the summary is the median over
rounds with its quartiles and extremes.

Two passes are timed per model and round: the full forward pass of the protocol (batch x seq_len tokens,
all logits, ``use_cache=False``) and the prefill as ``generate`` runs it (logits of the last position
only, ``logits_to_keep=1``). The input is the same token ids for every model.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from .child import emit_json, read_ids_file, run_module

MODES = {"prefill": 0, "prefill_last_logit": 1}   # mode -> logits_to_keep (0: all positions)


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


def summarize(times: dict, baseline: str, tokens: int, passes: int) -> dict:
    """Per model and mode: median tokens/s and the per-round speed-up against ``baseline``
    (median, quartiles, min, max). ``times[model][mode]`` = seconds of each round's ``passes`` passes."""
    out = {}
    for model, modes in times.items():
        out[model] = {}
        for mode, secs in modes.items():
            base = times[baseline][mode]
            ratios = [b / t for b, t in zip(base, secs)]
            q1, med, q3 = _quartiles(ratios)
            out[model][mode] = {
                "tps_median": tokens * passes / statistics.median(secs),
                "speedup_median": med, "speedup_q1": q1, "speedup_q3": q3,
                "speedup_min": min(ratios), "speedup_max": max(ratios), "rounds": len(ratios),
            }
    return out


@torch.no_grad()
def interleaved_times(models: dict, ids: torch.Tensor, *, rounds: int, passes: int, warmup: int,
                      modes=tuple(MODES), progress: bool = True) -> dict:
    """Seconds of ``passes`` forward passes of each model, per mode, per round (rotating order)."""
    names = list(models)
    for name in names:
        for mode in modes:
            for _ in range(warmup):
                models[name](input_ids=ids, use_cache=False, **_kwargs(mode))
    times = {n: {m: [] for m in modes} for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            for mode in modes:
                kw = _kwargs(mode)
                t0 = time.perf_counter()
                for _ in range(passes):
                    models[name](input_ids=ids, use_cache=False, **kw)
                times[name][mode].append(time.perf_counter() - t0)
        if progress:
            base = names[0]
            last = " ".join(f"{n} {times[base]['prefill'][-1] / times[n]['prefill'][-1]:.2f}x"
                            for n in names[1:] if "prefill" in times[n])
            print(f"  round {r + 1}/{rounds}: prefill speed-up vs {base}: {last}", file=sys.stderr, flush=True)
    return times


def _kwargs(mode: str) -> dict:
    keep = MODES[mode]
    return {"logits_to_keep": keep} if keep else {}


def run_child(args: argparse.Namespace) -> dict:
    from llmc.quant.prepacked_linear import prepack_float_linears
    from .loading import fixed_input_ids, load_for_inference
    torch.set_num_threads(args.threads)
    specs = [(s, False) for s in args.model] + [(s, True) for s in args.prepack]
    models, info, tokenizer = {}, {}, None
    for spec, prepack in specs:
        name, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"error: --model/--prepack take NAME=DIR, got {spec!r}")
        if not Path(path).is_dir():
            raise SystemExit(f"error: {name}: no checkpoint folder {path}")
        if name in models:
            raise SystemExit(f"error: the name {name!r} is given twice")
        model, tok, load_info = load_for_inference(path, dtype=args.dtype, backend=args.backend)
        tokenizer = tokenizer or tok
        if prepack:
            load_info["prepacked_float_linears"] = prepack_float_linears(model, batch_hint=args.seq_len)
        models[name] = model
        info[name] = {"checkpoint": str(Path(path).resolve()), "prepacked": prepack,
                      **{k: load_info[k] for k in ("checkpoint_kind", "compute_dtype", "deployment",
                                                   "prepacked_float_linears") if k in load_info}}
    baseline = args.baseline or next(iter(models))
    if baseline not in models:
        raise SystemExit(f"error: --baseline {baseline!r} is not one of the models {sorted(models)}")
    # the baseline first: the progress line reads as speed-ups against it
    models = {baseline: models[baseline], **{k: v for k, v in models.items() if k != baseline}}
    if args.ids_file:
        ids, source = read_ids_file(args.ids_file)
        ids = torch.tensor(ids, dtype=torch.long)
    else:
        ids, input_info = fixed_input_ids(tokenizer, args.seq_len)
        source = input_info["source"]
    times = interleaved_times(models, ids, rounds=args.rounds, passes=args.passes, warmup=args.warmup)
    tokens = ids.numel()
    from llmc.quant.int_linear import int_mm_info
    return {"baseline": baseline, "threads": args.threads, "rounds": args.rounds, "passes": args.passes,
            "warmup": args.warmup, "tokens_per_pass": tokens, "input": source, "models": info,
            "summary": summarize(times, baseline, tokens, args.passes), "times": times,
            "environment": {"torch": torch.__version__, "int_kernels": int_mm_info(),
                            "load_average": os.getloadavg()}}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llmc_slm.tracks.speed_ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", default=[], metavar="NAME=DIR",
                   help="a checkpoint (packed or Hugging Face) to time; repeatable")
    p.add_argument("--prepack", action="append", default=[], metavar="NAME=DIR",
                   help="a checkpoint whose float linears are pre-packed for oneDNN (llmc.quant.prepacked_linear)")
    p.add_argument("--baseline", help="the NAME the speed-ups are against (default: the first --model)")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--passes", type=int, default=3, help="forward passes per model, mode and round")
    p.add_argument("--warmup", type=int, default=3, help="untimed passes per model and mode first")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--backend", default="auto", choices=("auto", "onednn", "int_mm"))
    p.add_argument("--ids-file", help="JSON {input_ids: [[...]], source: ...}: the input to use")
    p.add_argument("--out", help="write the result JSON here (default: print it)")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if not args.model and not args.prepack:
        raise SystemExit("error: give at least one --model NAME=DIR")
    emit_json(run_child(args), args.out)
    return 0


def compare_speed(models: dict, *, prepack: Optional[dict] = None, baseline: Optional[str] = None,
                  threads: int = 1, rounds: int = 20, passes: int = 3, warmup: int = 3, seq_len: int = 128,
                  input_ids: Optional[torch.Tensor] = None, input_source: str = "given by the caller",
                  timeout: Optional[float] = 7200) -> dict:
    """Run the interleaved comparison in a fresh ``python -m llmc_slm.tracks.speed_ab`` process (its progress
    lines pass through to stderr). ``models`` / ``prepack``: {name: checkpoint dir}. Returns the child's dict;
    raises :class:`~llmc_slm.tracks.child.ChildError` if it fails."""
    args = ["--threads", threads, "--rounds", rounds, "--passes", passes, "--warmup", warmup, "--seq-len", seq_len]
    for name, path in models.items():
        args += ["--model", f"{name}={path}"]
    for name, path in (prepack or {}).items():
        args += ["--prepack", f"{name}={path}"]
    if baseline:
        args += ["--baseline", baseline]
    return run_module("llmc_slm.tracks.speed_ab", args, threads=threads, input_ids=input_ids,
                      input_source=input_source, timeout=timeout, echo_stderr=True, what="speed comparison child")


if __name__ == "__main__":
    sys.exit(main())
