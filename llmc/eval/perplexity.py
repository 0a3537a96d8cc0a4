"""Perplexity over non-overlapping windows, the GPTQ/LLMC convention (protocol.md, Track 1).

The text is tokenized once and cut into ``n = len // seq_len`` windows (the tail is dropped); each
window is scored independently, every token but the first predicted from its prefix:

    ppl = exp( sum_w sum_t NLL(x_{w,t} | x_{w,<t}) / (n * (seq_len - 1)) )

Logits may be computed in bfloat16; the log-softmax is taken in float32.

Memory: a batch's logits are ``bs x seq_len x vocab`` (SmolLM2 at 2048 tokens: 0.2 GB per window in
bfloat16, 0.4 GB more for the float32 log-softmax), so ``eval.bs`` is split into micro-batches that keep
them under ``max_logits_bytes`` (1 GiB by default; the result records ``micro_batch``). Windows are
scored independently, so the split changes nothing but the summation order.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def window_ids(ids: torch.Tensor, seq_len: int) -> torch.Tensor:
    """[N] token ids -> [n_windows, seq_len], tail dropped."""
    n = ids.numel() // seq_len
    if n == 0:
        raise ValueError(f"text of {ids.numel()} tokens is shorter than one window of {seq_len}")
    return ids[: n * seq_len].view(n, seq_len)


MAX_LOGITS_BYTES = 1 << 30


def micro_batch_size(model, seq_len: int, bs: int, max_logits_bytes: int = MAX_LOGITS_BYTES) -> int:
    """The largest batch <= ``bs`` whose logits (model dtype) and float32 log-softmax fit the budget."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    vocab = getattr(head, "out_features", None) or getattr(getattr(model, "config", None), "vocab_size", None)
    if not vocab:
        return max(1, bs)
    elem = next(model.parameters()).element_size()
    per_window = seq_len * vocab * (elem + 4)
    return max(1, min(bs, max_logits_bytes // per_window))


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, bs: int = 1, desc: str = "wikitext2 ppl",
               progress: bool = True, max_logits_bytes: int = MAX_LOGITS_BYTES) -> dict:
    """Perplexity of ``model`` (an HF causal LM) over ``windows`` [n, seq_len], ``bs`` windows per forward
    pass at most (fewer where their logits would exceed ``max_logits_bytes``)."""
    device = next(model.parameters()).device
    bs = micro_batch_size(model, windows.shape[1], bs, max_logits_bytes)
    total_nll = 0.0
    total_tokens = 0
    start = time.perf_counter()
    bar = tqdm(range(0, windows.shape[0], bs), desc=desc, disable=not progress, leave=False)
    for i in bar:
        batch = windows[i:i + bs].to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1]
        nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                              reduction="sum")
        total_nll += nll.item()
        total_tokens += batch[:, 1:].numel()
        bar.set_postfix(ppl=f"{math.exp(total_nll / total_tokens):.3f}")
    mean_nll = total_nll / total_tokens
    return {"ppl": math.exp(mean_nll) if mean_nll < 700 else float("inf"), "nll": mean_nll,
            "windows": int(windows.shape[0]), "seq_len": int(windows.shape[1]), "tokens": total_tokens,
            "micro_batch": bs, "seconds": time.perf_counter() - start}
