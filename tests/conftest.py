"""Shared fixtures: tiny randomly initialised models of each supported family, and the real tokenizer."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

pytest_plugins = ["session_deadline"]   # the whole session's deadline (tests/session_deadline.py)

from llmc import catalog  # noqa: E402

catalog.load()   # every built-in name declared, as the CLI's entry does

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=256, max_position_embeddings=256,
            pad_token_id=0, bos_token_id=1, eos_token_id=2)


# per family, what its tiny twin needs beyond TINY: Gemma-3 with one KV head, a sliding-window layer (window 8,
# shorter than the test sequences) and a global one
TINY_FAMILY = {"gemma3_text": dict(num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
                                   layer_types=["sliding_attention", "full_attention"])}


def tiny_hf_model(model_type: str = "llama", seed: int = 0, **overrides):
    """A tiny random HF causal LM of the given family, float32, eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM
    kwargs = {**TINY, **TINY_FAMILY.get(model_type, {}), **overrides}
    if model_type == "smollm3":
        kwargs.setdefault("no_rope_layers", [1, 0][: kwargs["num_hidden_layers"]] +
                          [1] * max(0, kwargs["num_hidden_layers"] - 2))
    config = AutoConfig.for_model(model_type, **kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    # random init of norms is all-ones: perturb so that folding/smoothing tests are not trivial
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif p.dim() == 1:
                p.normal_(0, 0.1)
    return model


def tiny_adapter(model_type: str = "llama", seed: int = 0, **overrides):
    from llmc import catalog
    from llmc.models.base import make_adapter
    from llmc.models.families import adapter_for_hf_type
    catalog.load()
    model = tiny_hf_model(model_type, seed, **overrides)
    return make_adapter(adapter_for_hf_type(model_type), model, tokenizer=None)


def calib_ids(n=4, seq=16, vocab=256, seed=0):
    """Random calibration token ids wrapped as CalibData."""
    from llmc.data.calib import CalibData
    g = torch.Generator().manual_seed(seed)
    return CalibData(torch.randint(0, vocab, (n, seq), generator=g), {})


def logits(adapter, ids):
    with torch.no_grad():
        return adapter.model(input_ids=ids).logits


def rel_diff(a, b):
    """max |a - b| / max |a|"""
    return ((a - b).abs().max() / a.abs().max()).item()


@pytest.fixture(params=["llama", "qwen2", "smollm3"])
def any_family(request):
    return request.param


@pytest.fixture(scope="session")
def smollm2_source():
    """The embedded SmolLM2 source (skips only if its package is missing, which `make test` installs)."""
    from llmc.errors import UserError
    from llmc.models.loading import resolve_model_source
    try:
        return resolve_model_source("smollm2-135m-instruct")
    except UserError as e:
        pytest.fail(f"embedded model unavailable: {e}")


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The embedded SmolLM2's tokenizer (skips only if its package is missing, which `make test` installs)."""
    from transformers import AutoTokenizer

    from llmc.errors import UserError
    from llmc.models.loading import local_dir, resolve_model_source
    try:
        return AutoTokenizer.from_pretrained(local_dir(resolve_model_source("smollm2-135m-instruct")))
    except UserError as e:
        pytest.skip(f"embedded tokenizer unavailable: {e}")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_tokenizer):
    """A random 2-layer Llama (hidden 32) saved with the embedded SmolLM2 tokenizer: a ``model.path``
    directory for runs through the CLI."""
    from transformers import LlamaConfig, LlamaForCausalLM
    tok = smollm2_tokenizer
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def fold_let_blockwise(adapter, algo, on_state=None):
    """OmniQuant's LET initialised from calibration and folded block by block, without quantization
    (``on_state(state)`` runs before each block's fold)."""
    from llmc.algos.base import capture_block0_inputs
    inputs = capture_block0_inputs(adapter, calib_ids().input_ids, 2)
    for block in adapter.blocks:
        state = algo.make_state(block)
        _, act_max = algo._float_targets(block, state, inputs.hidden, inputs.batch_kwargs())
        state.init_let(act_max, 0.5)
        if on_state is not None:
            on_state(state)
        state.fold(quantize=False)
