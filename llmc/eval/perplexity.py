"""Perplexity over non-overlapping windows, the GPTQ/LLMC convention (protocol.md, Track 1).

The text is tokenized once and cut into ``n = len // seq_len`` windows (the tail is dropped); each
window is scored independently, every token but the first predicted from its prefix:

    ppl = exp( sum_w sum_t NLL(x_{w,t} | x_{w,<t}) / (n * (seq_len - 1)) )

Logits may be computed in bfloat16; the log-softmax is taken in float32, ``TOKEN_CHUNK`` tokens at a time
(:func:`token_stats`).

Memory: a batch's logits are ``bs x seq_len x vocab`` (SmolLM2 at 2048 tokens: 0.2 GB per window in
bfloat16; the float32 log-softmaxes only ever hold a chunk of tokens), so ``eval.bs`` is split into
micro-batches that keep them under ``max_logits_bytes`` (1 GiB by default, a quarter of it with a reference
model, as before the chunking, so that the recorded ``micro_batch`` and the figures stay what they were).
Windows are scored independently, so the split changes nothing but the summation order.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from ..progress import Bar


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
               progress: bool = True, max_logits_bytes: int = MAX_LOGITS_BYTES, reference=None,
               reference_cache=None, reference_summary: bool = True) -> dict:
    """Perplexity of ``model`` (an HF causal LM) over ``windows`` [n, seq_len], ``bs`` windows per forward
    pass at most (fewer where their logits would exceed ``max_logits_bytes``).

    The result has ``per_item``: ``window_nll`` (each window's summed NLL) and ``window_tokens``. With a
    ``reference`` model (the float model, for a quantized ``model``), every window is also scored by it and
    compared token by token: ``vs_float`` = {``kld``: mean over predicted tokens of KL(p_ref || p_model),
    ``kld_stderr`` (over windows), ``top1_agreement``: share of tokens whose most likely next token is the
    same, ``ref_ppl``, ``delta_log_ppl``: mean over windows of the per-token log-perplexity difference
    (model - reference) with its paired ``delta_log_ppl_stderr``, ``windows``}, what llama.cpp's perplexity
    tool reports as KLD and "same top p"; ``per_item`` gains ``ref_window_nll``, ``window_kl`` (summed
    over the window's tokens) and ``window_top1`` (tokens that agree). ``reference_cache``: a folder where
    the reference's final hidden states are kept between runs (``llmc.eval.reference_cache``: the same
    figures, bit for bit, without the reference's transformer blocks); ``vs_float`` then says how it was
    used (``reference_cache``). With ``reference_summary`` as well, float32 models whose output layer is the
    reference's take the KL from a stored summary of the reference's distributions instead of its output layer
    (``llmc.eval.reference_summary``: the same NLLs and top-1, the KL within float32 rounding)."""
    device = next(model.parameters()).device
    budget = max_logits_bytes if reference is None else max_logits_bytes // 4   # two models' log-probs, KL
    bs = micro_batch_size(model, windows.shape[1], bs, budget)
    total_nll = 0.0
    total_tokens = 0
    cols: dict[str, list] = {"window_nll": [], "window_tokens": []}
    ref_outputs = summary = None
    if reference is not None:
        from .reference_cache import ReferenceOutputs
        cols.update(ref_window_nll=[], window_kl=[], window_top1=[])
        ref_outputs = ReferenceOutputs(reference, windows, bs, reference_cache)
        if reference_cache is not None and reference_summary:
            from .reference_summary import ReferenceSummary
            summary = ReferenceSummary(model, ref_outputs)
    start = time.perf_counter()
    with Bar(windows.shape[0], desc, disable=not progress, unit="window") as bar:
        for i in range(0, windows.shape[0], bs):
            batch = windows[i:i + bs].to(device)
            target = batch[:, 1:]
            if summary is not None and summary.status == "hit":
                logits, hidden = _logits_and_final_hidden(model, batch)
                stats = token_stats(logits[:, :-1], target, summary=summary.batch(i, batch.shape[0], device),
                                    hidden=hidden[:, :-1])
            else:
                logits = model(input_ids=batch, use_cache=False).logits[:, :-1]
                ref_logits = None if ref_outputs is None else ref_outputs.logits(i, batch)[:, :-1].to(device)
                building = summary is not None and summary.status == "building"
                stats = token_stats(logits, target, ref_logits, summarize=building)
                if building:
                    summary.record(ref_logits, stats)
            nll = stats["nll"].sum(1)
            cols["window_nll"] += nll.tolist()
            cols["window_tokens"] += [target.shape[1]] * target.shape[0]
            total_nll += nll.sum().item()
            total_tokens += target.numel()
            if ref_outputs is not None:
                cols["ref_window_nll"] += stats["ref_nll"].sum(1).tolist()
                cols["window_top1"] += stats["top1"].sum(1).tolist()
                cols["window_kl"] += stats["kl"].sum(1).tolist()
            bar.update(batch.shape[0])
            bar.set_postfix(ppl=f"{math.exp(total_nll / total_tokens):.3f}")
    mean_nll = total_nll / total_tokens
    out = {"ppl": _ppl(mean_nll), "nll": mean_nll,
           "windows": int(windows.shape[0]), "seq_len": int(windows.shape[1]), "tokens": total_tokens,
           "micro_batch": bs, "seconds": time.perf_counter() - start}
    if ref_outputs is not None:
        ref_outputs.save()
        if summary is not None:
            summary.save()
        out["vs_float"] = versus_reference(cols)
        if reference_cache is not None:
            out["vs_float"]["reference_cache"] = ref_outputs.describe()
            if summary is not None:
                out["vs_float"]["reference_cache"]["summary"] = summary.describe()
    out["per_item"] = cols
    return out


def _logits_and_final_hidden(model, batch):
    """``model``'s logits on ``batch`` and the final hidden states its output layer received (the same logits,
    bit for bit, as a plain call)."""
    captured = []
    handle = model.get_output_embeddings().register_forward_pre_hook(
        lambda _m, args: captured.append(args[0].detach()))
    try:
        logits = model(input_ids=batch, use_cache=False).logits
    finally:
        handle.remove()
    return logits, captured[-1]


def _ppl(mean_nll: float) -> float:
    return math.exp(mean_nll) if mean_nll < 700 else float("inf")


TOKEN_CHUNK = 64
CHUNK_BYTES = 4 << 20


def token_chunk(bs: int, vocab: int, max_bytes: int = CHUNK_BYTES) -> int:
    """Tokens per chunk in :func:`token_stats`: as many as keep one [bs, chunk, vocab] float32 temporary
    within ``max_bytes`` (4 MiB, about a last-level cache's share), between 4 and ``TOKEN_CHUNK``.

    A fixed 64 tokens suited SmolLM2's 49,152 words (12 MiB) but not Gemma-3's 262,144 (64 MiB, far out of
    cache): at 4 tokens Gemma's paired statistics take 2.3 s per 2,048-token window instead of 7.2 s on a
    2-core AVX2 VM (float32), for the same bits. Fewer than 4 rows per chunk would change the bits (the
    softmax kernels then split rows across threads), hence the floor."""
    return max(4, min(TOKEN_CHUNK, max_bytes // max(1, bs * vocab * 4)))


def token_stats(logits, target, ref_logits=None, chunk: int | None = None, *, summarize: bool = False,
                summary: dict | None = None, hidden=None) -> dict:
    """Per predicted token [bs, T]: ``nll`` (the cross-entropy of ``target``), and with the reference's logits
    ``ref_nll``, ``kl`` = KL(p_ref || p) = sum_v p_ref (log p_ref - log p) and ``top1`` (the same argmax).

    The float32 log-softmaxes are taken ``chunk`` tokens at a time (:func:`token_chunk` by default): each
    token's figures are the same operations on the same row as over the whole window (so the same bits:
    ``tests/test_perplexity.py``), but the [chunk, vocab] temporaries stay in cache instead of streaming four
    or five [T, vocab] float32 tensors (0.4 GB each for SmolLM2 at 2,048 tokens) through memory, which made
    the comparison cost as much as a forward pass.

    ``summarize`` adds the reference's most likely token (``ref_argmax``) and ``ref_lse`` (log-sum-exp of its
    logits), what :class:`~llmc.eval.reference_summary.ReferenceSummary` stores. Given such a ``summary`` of
    the reference for this batch (its ``expected``, ``lse``, ``nll``, ``argmax`` and ``hidden``, predicted
    positions only) and the model's final ``hidden`` states instead of ``ref_logits``, ``ref_nll`` and the
    reference's argmax are read from it and ``kl`` = e_r . (h_r - h_q) - LSE_r + LSE_q, in float64."""
    bs, T = target.shape
    chunk = chunk or token_chunk(bs, logits.shape[-1])
    out = {"nll": torch.empty(bs, T, dtype=torch.float32, device=logits.device)}
    if ref_logits is not None or summary is not None:
        out.update(ref_nll=torch.empty_like(out["nll"]), kl=torch.empty_like(out["nll"]),
                   top1=torch.empty(bs, T, dtype=torch.bool, device=logits.device))
    if summarize or summary is not None:
        out.update(ref_argmax=torch.empty(bs, T, dtype=torch.long, device=logits.device),
                   ref_lse=torch.empty_like(out["nll"]))
    lse = torch.empty_like(out["nll"]) if summary is not None else None
    for a in range(0, T, chunk):
        c = slice(a, min(a + chunk, T))
        tgt = target[:, c, None]
        lp = F.log_softmax(logits[:, c].float(), dim=-1)
        out["nll"][:, c] = -lp.gather(-1, tgt).squeeze(-1)
        if summary is not None:
            out["top1"][:, c] = lp.argmax(-1) == summary["argmax"][:, c]
            lse[:, c] = torch.logsumexp(logits[:, c].float(), dim=-1)
            continue
        if ref_logits is None:
            continue
        ref = F.log_softmax(ref_logits[:, c].float(), dim=-1)
        out["ref_nll"][:, c] = -ref.gather(-1, tgt).squeeze(-1)
        ref_top = ref.argmax(-1)
        out["top1"][:, c] = lp.argmax(-1) == ref_top
        out["kl"][:, c] = F.kl_div(lp, ref, reduction="none", log_target=True).sum(-1)
        if summarize:
            out["ref_argmax"][:, c] = ref_top
            out["ref_lse"][:, c] = torch.logsumexp(ref_logits[:, c].float(), dim=-1)
    if summary is not None:
        out["ref_nll"].copy_(summary["nll"])
        out["ref_argmax"].copy_(summary["argmax"])
        out["ref_lse"].copy_(summary["lse"])
        shift = (summary["hidden"].double() - hidden.double()) * summary["expected"].double()
        out["kl"].copy_(shift.sum(-1) - summary["lse"].double() + lse.double())
    return out


def _mean_se(xs: list) -> tuple[float, float | None]:
    n = len(xs)
    mean = sum(xs) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1) / n)


def versus_reference(cols: dict) -> dict:
    """The ``vs_float`` summary of per-window columns with a reference (see :func:`perplexity`)."""
    tok = cols["window_tokens"]
    total = sum(tok)
    kld, kld_se = _mean_se([k / t for k, t in zip(cols["window_kl"], tok)])
    delta, delta_se = _mean_se([(a - b) / t for a, b, t in zip(cols["window_nll"], cols["ref_window_nll"], tok)])
    return {"kld": sum(cols["window_kl"]) / total, "kld_stderr": kld_se,
            "top1_agreement": sum(cols["window_top1"]) / total,
            "ref_ppl": _ppl(sum(cols["ref_window_nll"]) / total),
            "delta_log_ppl": delta, "delta_log_ppl_stderr": delta_se, "windows": len(tok)}
