"""Multiply-accumulates of one forward pass (Track 2's ``macs``): calflops 0.3.2's count plus what it cannot
see, scaled-dot-product attention (:data:`ATTENTION_MACS_FORMULA`) and the integer GEMMs."""

from __future__ import annotations

import torch

ATTENTION_MACS_FORMULA = ("per decoder layer 2 * num_attention_heads * seq_len^2 * head_dim * batch "
                          "(Q K^T and A V over the full seq_len x seq_len score matrix, which SDPA computes "
                          "with the causal mask applied); calflops 0.3.2 does not count SDPA")


def attention_macs(config, seq_len: int = 128, batch: int = 1) -> int:
    """:data:`ATTENTION_MACS_FORMULA` for a Hugging Face config (GQA shares K/V heads but every query
    head computes its own scores, so the count uses ``num_attention_heads``)."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return int(config.num_hidden_layers * 2 * heads * seq_len * seq_len * head_dim * batch)


def integer_linear_macs(model, tokens: int) -> int:
    """MACs of the integer GEMMs (``IntLinear`` of kind ``int``), which calflops cannot see."""
    from llmc.quant.int_linear import IntLinear
    return int(sum(tokens * m.in_features * m.out_features for m in model.modules()
                   if isinstance(m, IntLinear) and m.kind == "int"))


def count_macs(model, input_ids: torch.Tensor) -> dict:
    """calflops 0.3.2 on one forward pass, plus the attention and integer MACs it misses. ``params`` is
    calflops' parameter count (parameters with ``requires_grad``; integer codes are buffers and are not
    counted): the paper's "Model Size"."""
    from calflops import calculate_flops
    batch, seq = input_ids.shape
    with torch.no_grad():
        flops, macs, params = calculate_flops(model=model, kwargs={"input_ids": input_ids}, print_results=False,
                                              print_detailed=False, output_as_string=False)
    att = attention_macs(model.config, seq, batch)
    integer = integer_linear_macs(model, batch * seq)
    return {"macs": int(macs) + att + integer, "macs_calflops": int(macs), "flops_calflops": int(flops),
            "params": int(params), "params_calflops": int(params), "macs_attention": att, "macs_integer": integer,
            "macs_formula": "macs = macs_calflops + macs_attention + macs_integer; " + ATTENTION_MACS_FORMULA}
