"""What a run will need, before it starts: memory (model, calibration activations, a method's training,
evaluation batches) and the quantization's wall time on this device, from a short measured probe.

A request that cannot fit the machine's memory (or the GPU's) is refused with the estimate and the knob to
turn; one that fits but is large or long is announced with its estimate (and, on a CPU, the ``--profile
cpu`` alternative). The estimate is recorded in the results (``estimate``), so it can be compared with
what the run measured (``quant_cost``).

The memory model counts the big tensors each stage holds (element counts from the architecture, bytes from
the dtype); it is a lower bound of the real peak plus a fixed allowance for the runtime, good to a factor
of about 1.5 on the runs measured here, which is what a refusal needs (it refuses only past 90% of the
memory available). The time model times one decoder layer of the architecture (forward, and backward
for the methods that train) on a random input and scales it by the number of layer passes the method
makes (``PASSES``): good to a factor of about 2, which is what an announcement needs.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

from .errors import UserError

log = logging.getLogger(__name__)

RUNTIME_BYTES = 700 * 2**20     # python + torch + transformers + lm-eval resident before any model
LONG_SECONDS = 20 * 60           # a quantization announced as long
FIT_FRACTION = 0.9               # refuse past this share of the memory available


@dataclass
class Estimate:
    device: str
    available_bytes: Optional[int]
    parts: dict = field(default_factory=dict)       # name -> bytes
    peak_bytes: int = 0
    quant_seconds: Optional[float] = None
    probe: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["peak_gb"] = round(self.peak_bytes / 2**30, 2)
        return d


def available_memory(device) -> Optional[int]:
    """Bytes free for this run: CUDA free memory, or the CPU's MemAvailable (Linux); None if unknown."""
    if getattr(device, "type", str(device)) == "cuda":
        import torch
        return int(torch.cuda.mem_get_info()[0])
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def arch_numbers(config: dict) -> dict:
    """Widths and parameter count of a Llama-style decoder from its HF config dict."""
    h = int(config["hidden_size"])
    layers = int(config["num_hidden_layers"])
    ffn = int(config["intermediate_size"])
    heads = int(config["num_attention_heads"])
    kv = int(config.get("num_key_value_heads") or heads)
    d = int(config.get("head_dim") or h // heads)
    vocab = int(config["vocab_size"])
    tied = bool(config.get("tie_word_embeddings", False))
    per_layer = h * d * (heads + 2 * kv) + heads * d * h + 3 * h * ffn
    params = layers * per_layer + vocab * h * (1 if tied else 2)
    return {"hidden": h, "layers": layers, "ffn": ffn, "vocab": vocab, "params": params, "per_layer": per_layer}


def _bytes(dtype) -> int:
    return {"float32": 4, "bfloat16": 2, "float16": 2}.get(str(dtype).replace("torch.", ""), 4)


def memory_parts(cfg, config: dict, dtype) -> dict:
    """The big tensors of each stage, in bytes (the peak is the model plus the largest stage)."""
    a = arch_numbers(config)
    b = _bytes(dtype)
    parts = {"model": a["params"] * b}
    q, c = cfg.quant, cfg.calib
    if q is not None and c is not None:
        tokens = c.n_samples * c.seq_len
        parts["calibration windows"] = tokens * 8 * 2        # int64 token ids, tokenized text and windows
        method = q.method
        if method in ("SpinQuant",):
            sp = q.special
            seq = sp.train_seq_len or c.seq_len
            micro = max(1, c.bs)
            # learning: float32 activations kept for backward, per layer ~ (12 h + 4 ffn) per token, plus
            # logits, their softmax and gradient over the vocabulary; the block loop of GPTQ as well
            act = micro * seq * (a["layers"] * (12 * a["hidden"] + 4 * a["ffn"]) + 3 * a["vocab"]) * 4
            parts["rotation learning"] = act + a["params"] * 4
            n = min(c.n_samples, sp.gptq_samples or c.n_samples)
            parts["calibration activations"] = 2 * n * c.seq_len * a["hidden"] * b
        elif method == "OmniQuant":
            # quantized and float chains (inputs and float32 targets) of every calibration window
            parts["calibration activations"] = tokens * a["hidden"] * (2 * b + 8)
            parts["block training"] = c.bs * c.seq_len * (12 * a["hidden"] + 4 * a["ffn"]) * 4 * 2
        elif method == "AWQ":
            # per block, every subset's recorded input and output (attention, MLP, o_proj, down_proj: about
            # 6 hidden-wide and 1 ffn-wide tensors per token), the inputs again as the search's features, and
            # the block's inputs and outputs
            parts["calibration activations"] = tokens * (10 * a["hidden"] + 2 * a["ffn"]) * b
        else:   # SmoothQuant, GPTQ, RTN's static ranges: a block's inputs and outputs
            parts["calibration activations"] = 2 * tokens * a["hidden"] * b
    e = cfg.eval
    harness = [n for n in e.name if n != "wikitext2"]
    eval_bytes = 0
    if "wikitext2" in e.name:
        eval_bytes = max(eval_bytes, min(e.bs * e.seq_len * a["vocab"] * 4, 2**30) * 2)
    if harness:
        eval_bytes = max(eval_bytes, e.bs * 512 * a["vocab"] * 4 * 2)
    parts["evaluation batch"] = eval_bytes
    return parts


# decoder-layer passes (forward = 1, forward + backward = 3) per calibration token, per layer
def layer_passes(cfg) -> float:
    q, c = cfg.quant, cfg.calib
    if q is None or c is None:
        return 0.0
    sp = q.special
    if q.method == "OmniQuant":
        return (getattr(sp, "epochs", 20) * 3 + 4) * c.n_samples * c.seq_len
    if q.method == "SpinQuant":
        seq = sp.train_seq_len or c.seq_len
        learn = sp.steps * sp.train_bs * seq * 3 if sp.learn_rotations else 0
        n = min(c.n_samples, sp.gptq_samples or c.n_samples)
        return learn + 5 * n * c.seq_len
    if q.method == "GPTQ" or (q.method == "QuaRot" and sp.weight_algo == "gptq"):
        return 5 * c.n_samples * c.seq_len
    if q.method == "AWQ":   # one recording pass, then each grid point re-runs attention, MLP and down_proj
        return (1 + 1.5 * sp.n_grid * sp.auto_scale) * c.n_samples * c.seq_len
    return 2 * c.n_samples * c.seq_len


def probe_layer_seconds(config: dict, dtype, device, tokens: int = 256) -> float:
    """Seconds per token of one decoder layer's forward on this device (best of 2 after a warm-up)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    small = {k: v for k, v in config.items() if not k.startswith("_")}
    layers = small.get("num_hidden_layers")
    for key, value in small.items():   # per-layer lists (Gemma-3's layer_types, SmolLM3's no_rope_layers)
        if isinstance(value, list) and layers and len(value) == layers:
            small[key] = value[:1]
    small.update(num_hidden_layers=1, vocab_size=256)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**small), dtype=dtype).to(device).eval()
    block = model.model
    x = torch.randint(0, 256, (1, tokens), device=device)
    with torch.no_grad():
        block(input_ids=x)
        best = math.inf
        for _ in range(2):
            t = time.perf_counter()
            block(input_ids=x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
    return best / tokens


def estimate_run(cfg, config: dict, dtype, device, probe: bool = True) -> Estimate:
    est = Estimate(device=str(device), available_bytes=available_memory(device))
    est.parts = memory_parts(cfg, config, dtype)
    model = est.parts["model"]
    stages = [v for k, v in est.parts.items() if k != "model"]
    est.peak_bytes = RUNTIME_BYTES + model + max(stages, default=0)
    passes = layer_passes(cfg)
    if probe and passes:
        per_token = probe_layer_seconds(config, dtype, device)
        layers = arch_numbers(config)["layers"]
        est.quant_seconds = per_token * passes * layers
        est.probe = {"layer_forward_s_per_token": per_token, "layer_passes_per_layer": passes, "layers": layers}
    return est


def check_resources(cfg, plan) -> Optional[dict]:
    """Refuse a run that cannot fit (UserError with the estimate and the knob), announce a large or long
    one, and return the estimate for the record (None where the architecture is not known beforehand)."""
    config = getattr(plan.source, "arch", None) or getattr(plan.source, "hf_config", None)
    if not config or os.environ.get("SLMQUANT_NO_ESTIMATE") == "1":
        return None
    est = estimate_run(cfg, config, plan.dtype, plan.device, probe=cfg.quant is not None)
    gb = est.peak_bytes / 2**30
    if est.available_bytes is not None and est.peak_bytes > FIT_FRACTION * est.available_bytes:
        biggest = max((k for k in est.parts if k != "model"), key=lambda k: est.parts[k], default="model")
        knob = {"calibration activations": "lower calib.n_samples or calib.seq_len",
                "rotation learning": "lower calib.bs (the micro-batch) or quant.special.train_seq_len",
                "block training": "lower calib.bs or calib.seq_len",
                "evaluation batch": "lower eval.bs"}.get(biggest, "use a smaller model")
        hint = " or add --profile cpu" if plan.device.type == "cpu" and not cfg.profile else ""
        raise UserError(f"this run needs about {gb:.1f} GB ({biggest}: {est.parts[biggest] / 2**30:.1f} GB) but "
                        f"{est.available_bytes / 2**30:.1f} GB are available on {est.device}: {knob}{hint}")
    if est.quant_seconds is not None and est.quant_seconds > LONG_SECONDS:
        hint = "; --profile cpu runs a CPU-sized calibration" if plan.device.type == "cpu" and not cfg.profile else ""
        msg = (f"estimated quantization time on this {est.device}: about {est.quant_seconds / 60:.0f} min "
               f"(peak memory about {gb:.1f} GB){hint}")
        est.notes.append(msg)
        log.warning(msg)
    elif est.available_bytes is not None and est.peak_bytes > 0.5 * est.available_bytes:
        msg = f"this run needs about {gb:.1f} GB of the {est.available_bytes / 2**30:.1f} GB available"
        est.notes.append(msg)
        log.warning(msg)
    return est.as_dict()
