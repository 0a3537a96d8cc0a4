"""The float reference's next-token distributions on the WikiText-2 windows, summarised so that a later paired run
computes its KL divergence from them without the reference's output layer (``eval.reference_summary``).

For one predicted token, with ``z = W h + b`` the logits of a final hidden state ``h`` through an output layer
``(W, b)`` that the reference and the evaluated model share, ``p = softmax(z)`` and ``LSE = log sum_v exp(z_v)``:

    KL(p_r || p_q) = sum_v p_r,v (z_r,v - z_q,v) - LSE_r + LSE_q = e_r . (h_r - h_q) - LSE_r + LSE_q,
    e_r = W^T p_r

(``sum_v p_r,v = 1``; the bias cancels). ``e_r``, the output embedding the reference expects, has the hidden size,
so the reference's whole distribution (262,144 words for Gemma-3) enters the KL through ``hidden`` numbers and one
LSE per token. Stored per predicted token: ``e_r``, ``LSE_r``, the reference's NLL of the next token and its most
likely token; ``h_r`` is the hidden-state cache beside it (``reference_cache.py``). A run that finds the summary
skips the reference's output layer and its log-softmax: a paired Gemma-3 window of 2,048 tokens in float32 on 2
threads took 17.2 s instead of 27.6 s with the hidden-state cache alone and 34.8 s with neither (medians of 3
rounds; ``benchmarks/paired_ppl_speed.py``, results/reference/issue21_gemma/paired_ppl_speed.json).

Which figures change: the NLLs, the reference's NLL and the top-1 agreement are the same bits as the direct
computation (the stored values are the ones it computes). The KL is the same quantity summed another way, no less
accurately. ``p_r`` in ``e_r`` comes from a float64 softmax of the float32 logits (float32 softmaxes and
log-softmaxes sum the vocabulary with a bias: a float32 ``p_r`` left one of 1e-6 nats per token, 3e-5 of SmolLM2's
KLD). Float64 as the truth, on Gemma-3's own output layer and hidden states perturbed by noise (256 tokens, KLDs
1e-5 to 0.08), the identity's mean error is at most 3e-7 nats and any token's at most 1.6e-5; the direct float32
sum's 3.5e-6 and 2.6e-5. On SmolLM2 in float32 after W8A8 RTN both give window KLs within 5e-6 of the truth,
relatively. ``tests/test_reference_summary.py`` checks the agreement on tiny models. It is used only where it
holds that well:

* the logits are float32: in bfloat16 every logit is rounded after the layer (by about ``|z| 2^-9``, hundredths of
  a nat), a rounding the identity does not see, so bfloat16 runs keep the direct computation, bit for bit;
* the evaluated model's output layer is a plain ``nn.Linear`` equal, bit for bit, to the reference's, with no hooks
  (a quantized or rotated ``lm_head``, or a deployed int8 embedding tied to it, is computed directly);
* the hidden-state cache is a hit (``h_r``), and the summary's key (the hidden cache's plus a version) matches.

The first run that qualifies computes the KL directly and writes the summary (one ``p_r @ W`` product per token
more, once); the runs after it read it. A summary that cannot be read is rebuilt, never fatal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from .reference_cache import describe_file, read_keyed, write_keyed

SUMMARY_VERSION = 1
EXPECTED_CHUNK = 128      # tokens per p_r @ W product while building: a [128, vocab] float64 softmax (Gemma-3: 0.27 GB)


def head_mismatch(model: torch.nn.Module, reference: torch.nn.Module) -> Optional[str]:
    """Why ``model``'s logits are not ``reference``'s output layer applied to ``model``'s final hidden states in
    float32 (then the summary's identity does not give its KL), or None."""
    head, ref_head = model.get_output_embeddings(), reference.get_output_embeddings()
    if type(head) is not torch.nn.Linear or type(ref_head) is not torch.nn.Linear:
        return "the output layer is not a plain nn.Linear"
    if head.weight.dtype != torch.float32 or ref_head.weight.dtype != torch.float32:
        return f"{str(head.weight.dtype).replace('torch.', '')} logits (the identity holds to float32 rounding only)"
    if head._forward_hooks or head._forward_pre_hooks:
        return "the output layer has hooks"
    same_bias = (head.bias is None and ref_head.bias is None) or (
        head.bias is not None and ref_head.bias is not None and torch.equal(head.bias, ref_head.bias))
    if not (same_bias and torch.equal(head.weight, ref_head.weight)):
        return "the model's output layer differs from the reference's (quantized or rotated)"
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "get_text_config", lambda: cfg)() if cfg is not None else None
    if getattr(cfg, "final_logit_softcapping", None):
        return "the model soft-caps its logits"
    return None


class ReferenceSummary:
    """The summary for one :class:`~llmc.eval.reference_cache.ReferenceOutputs` and one evaluated model.

    ``status``: ``hit`` (read: :meth:`batch` serves the KL's terms), ``building`` (this run computes the KL
    directly and :meth:`record` collects the summary; :meth:`save` writes it), ``written``, or ``unused``
    (``reason`` says why)."""

    def __init__(self, model: torch.nn.Module, outputs):
        self.outputs = outputs
        self.data: Optional[dict] = None
        self.path: Optional[Path] = None
        self._recorded: list = []
        self.status, self.reason = "unused", None
        if outputs.path is None:
            self.reason = outputs.reason or "no hidden-state cache"
            return
        why = head_mismatch(model, outputs.model)
        if why:
            self.reason = why
            return
        self.head = outputs.model.get_output_embeddings()
        self.key = {**outputs.key, "summary": SUMMARY_VERSION}
        self.path = outputs.path.with_name(outputs.path.name.replace("reference_hidden_", "reference_summary_"))
        if outputs.hidden is not None:
            self.data = self._read()
        self.status = "hit" if self.data is not None else "building"

    def _read(self) -> Optional[dict]:
        if not self.path.is_file():
            return None
        try:
            data = read_keyed(self.path, self.key, ("expected", "lse", "nll", "argmax"))
        except Exception as e:      # noqa: BLE001 - a damaged summary is rebuilt, never fatal
            self.reason = f"{self.path.name} not read ({type(e).__name__}: {e}); rebuilt"
            return None
        n, T = self.outputs.windows.shape
        if tuple(data["expected"].shape) != (n, T - 1, self.head.in_features):
            self.reason = f"{self.path.name} has shape {tuple(data['expected'].shape)}; rebuilt"
            return None
        return data

    def batch(self, start: int, size: int, device) -> dict:
        """The KL's reference terms for windows[start:start + size], predicted positions only, on ``device``."""
        s = slice(start, start + size)
        out = {k: v[s].to(device) for k, v in self.data.items()}
        out["hidden"] = self.outputs.hidden[s, :-1].to(device)
        return out

    @torch.no_grad()
    def record(self, ref_logits: torch.Tensor, stats: dict) -> None:
        """Collect one batch's summary from its reference logits [bs, T-1, vocab] and the direct computation's
        ``stats`` (``token_stats(..., summarize=True)``: the reference's NLL, most likely token and LSE)."""
        weight = self.head.weight
        expected = torch.empty(*ref_logits.shape[:2], weight.shape[1], dtype=torch.float32, device=weight.device)
        for a in range(0, ref_logits.shape[1], EXPECTED_CHUNK):
            c = slice(a, a + EXPECTED_CHUNK)
            expected[:, c] = F.softmax(ref_logits[:, c].double(), dim=-1).float() @ weight
        self._recorded.append({"expected": expected.cpu(), "lse": stats["ref_lse"].cpu(),
                               "nll": stats["ref_nll"].cpu(), "argmax": stats["ref_argmax"].cpu()})

    def save(self) -> None:
        """Write the summary (atomically) once every window was recorded and the hidden states are on disk."""
        if self.status != "building" or self.outputs.status not in ("hit", "written"):
            return
        rows = sum(r["lse"].shape[0] for r in self._recorded)
        if rows != self.outputs.windows.shape[0]:
            return
        data = {k: torch.cat([r[k] for r in self._recorded]) for k in self._recorded[0]}
        self._recorded = []
        failed = write_keyed(self.path, data, self.key)
        self.status, self.reason = ("written", self.reason) if failed is None else (self.status, failed)

    def describe(self) -> dict:
        out = describe_file(self.status, self.path, self.reason)
        if self.status == "hit":
            out["kl"] = "e_r . (h_r - h_q) - LSE_r + LSE_q (llmc.eval.reference_summary)"
        return out
