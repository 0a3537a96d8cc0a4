"""The deployed form of ``quant.kvcache``: a KV cache that holds keys and values as integer codes.

The fake-quant model (``llmc.quant.kvcache``) rounds K and V to the grid inside the attention function;
the integer deployment stores them that way. :class:`IntKVLayer` is a transformers cache layer
(``BaseQuantizedLayer``, the extension point of its quantized caches) that, on every ``update``, quantizes
the new tokens' keys and values with the run's KV quantizer (per token and head, or per group inside a
head: each token's range is its own, so tokens are appended without touching the older ones, unlike
transformers' ``QuantizedCache``, which re-quantizes its whole history per channel), appends the codes
and ranges, and returns the dequantized history for attention. Storage per token and kv head:

* codes: ``head_dim`` bytes at 8 bits; ``head_dim / 2`` at 4 bits (two codes per byte, the even index
  in the low nibble, ``llmc.quant.int_linear.pack_int4_signed``);
* ranges: a float32 scale per token and head (or group), and a uint8 zero point for asymmetric grids.

With SpinQuant's / QuaRot's R3 (an online Hadamard on Q and K after RoPE), the cache rotates the keys
before quantizing them (the fake-quant attention does the same to the keys it quantizes) and the attention
function ``llmc_kvint`` rotates only the queries; ``Q H (K H)^T = Q K^T``, so the float model is unchanged
and the quantized keys are the rotated ones, as in the fake-quant model.

:func:`enable_int_kv_cache` installs both on a model and gives every forward call without a cache a fresh
:class:`IntKVCache` (a perplexity or prefill pass then quantizes K and V exactly as the fake-quant model
does); a caller that decodes passes the returned ``past_key_values`` back, as ``generate`` does.
"""

from __future__ import annotations

import copy
from typing import Callable, Optional

import torch
from transformers import AttentionInterface
from transformers.cache_utils import BaseQuantizedLayer, Cache
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from ..errors import ConfigError
from ..utils import cache_kwarg
from .int_linear import pack_int4_signed, unpack_int4_signed
from .quantizer import Quantizer

NAME = "llmc_kvint"
APPENDABLE = ("per_token", "per_group")


def check_appendable(q: Quantizer) -> None:
    """An integer cache appends token by token: the range must be the token's own."""
    if q.static or q.granularity not in APPENDABLE:
        raise ConfigError(f"quant.kvcache: an integer KV cache needs a dynamic range per token "
                          f"({' or '.join(APPENDABLE)}), not {'static ' if q.static else ''}{q.granularity}")
    if q.bit not in (4, 8):
        raise ConfigError(f"quant.kvcache.bit: the integer KV cache stores 8 or 4 bits, not {q.bit}")


class _Codes:
    """Growing storage of one tensor's codes and ranges along the token axis (dim 2), capacity doubling."""

    def __init__(self, quantizer: Quantizer):
        self.q = quantizer
        self.length = 0
        self.codes = self.scale = self.zero = None

    def _grow(self, t: torch.Tensor, need: int) -> torch.Tensor:
        if t.shape[2] >= need:
            return t
        shape = list(t.shape)
        shape[2] = max(need, 2 * t.shape[2])
        bigger = t.new_empty(shape)
        bigger[:, :, :self.length] = t[:, :, :self.length]
        return bigger

    def _pack(self, codes: torch.Tensor) -> torch.Tensor:
        if self.q.bit == 8:
            return codes
        signed = codes.to(torch.int16) - (0 if self.q.symmetric else 8)      # [0, 15] -> [-8, 7]
        flat = signed.reshape(-1, codes.shape[-1]).to(torch.int8)
        return pack_int4_signed(flat).reshape(*codes.shape[:-1], codes.shape[-1] // 2)

    def _unpack(self, packed: torch.Tensor) -> torch.Tensor:
        if self.q.bit == 8:
            return packed
        flat = unpack_int4_signed(packed.reshape(-1, packed.shape[-1])).to(torch.int16)
        return (flat + (0 if self.q.symmetric else 8)).reshape(*packed.shape[:-1], packed.shape[-1] * 2)

    def append(self, x: torch.Tensor) -> None:
        codes, scale, zero = self.q.quantize_with_params(x)
        parts = {"codes": self._pack(codes), "scale": scale.float().expand(*codes.shape[:3], *scale.shape[3:]),
                 "zero": None if self.q.symmetric else zero.expand(*codes.shape[:3], *zero.shape[3:]).to(torch.uint8)}
        n = x.shape[2]
        for name, value in parts.items():
            if value is None:
                continue
            store = getattr(self, name)
            if store is None:
                store = value.new_empty((*value.shape[:2], 0, *value.shape[3:]))
            store = self._grow(store, self.length + n)
            store[:, :, self.length:self.length + n] = value
            setattr(self, name, store)
        self.length += n

    def values(self, dtype: torch.dtype) -> torch.Tensor:
        t = self.length
        zero = self.zero[:, :, :t].float() if self.zero is not None else None
        return self.q.dequantize(self._unpack(self.codes[:, :, :t]), self.scale[:, :, :t], zero, dtype)

    def nbytes(self) -> int:
        """Bytes of the stored tokens (not of the spare capacity)."""
        t = self.length
        return sum(x[:, :, :t].numel() * x.element_size() for x in (self.codes, self.scale, self.zero)
                   if x is not None)


class IntKVLayer(BaseQuantizedLayer):
    """One attention layer's integer KV cache (module docstring)."""

    is_croppable = False

    def __init__(self, quantizer: Quantizer, key_transform: Optional[Callable] = None):
        super().__init__()
        check_appendable(quantizer)
        self.quantizer = quantizer
        self.key_transform = key_transform
        self._keys = _Codes(quantizer)
        self._values = _Codes(quantizer)

    def _quantize(self, tensor):       # the abstract interface of BaseQuantizedLayer; storage is _Codes
        raise NotImplementedError

    def _dequantize(self, q_tensor):
        raise NotImplementedError

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.key_transform is not None:
            key_states = self.key_transform(key_states)
        self._keys.append(key_states)
        self._values.append(value_states)
        self.cumulative_length += key_states.shape[-2]
        return self._keys.values(key_states.dtype), self._values.values(value_states.dtype)

    def reset(self) -> None:
        super().reset()
        self._keys, self._values = _Codes(self.quantizer), _Codes(self.quantizer)

    def nbytes(self) -> int:
        return self._keys.nbytes() + self._values.nbytes()


class IntKVCache(Cache):
    """A cache of :class:`IntKVLayer` for every decoder layer."""

    def __init__(self, num_layers: int, quantizer: Quantizer, key_transform: Optional[Callable] = None):
        super().__init__(layers=[IntKVLayer(copy.deepcopy(quantizer), key_transform) for _ in range(num_layers)])

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)


def kvint_attention(module, query, key, value, attention_mask, **kwargs):
    transform = getattr(module, "query_transform", None)
    if transform is not None:
        query = transform(query)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(NAME, kvint_attention)


def enable_int_kv_cache(model, quantizer: Quantizer, attention_modules: list, key_transform: Optional[Callable] = None):
    """Deploy the KV quantizer as an integer cache on ``model`` (module docstring); returns the hook handle
    that gives cache-less calls a fresh :class:`IntKVCache`."""
    check_appendable(quantizer)
    if "sliding_attention" in (getattr(model.config, "layer_types", None) or ()):
        raise ConfigError("quant.kvcache: the integer KV cache keeps every token, so it is not offered for "
                          "sliding-window layers (Gemma-3) yet; the fake-quant KV cache evaluates them")
    for attn in attention_modules:
        for name in ("k_quantizer", "v_quantizer", "query_key_transform"):   # the fake-quant hook's, if any
            if hasattr(attn, name):
                delattr(attn, name)
        attn.query_transform = key_transform
    model.set_attn_implementation(NAME)
    arg = cache_kwarg(model)
    n = len(attention_modules)

    def give_cache(module, args, kwargs):
        if kwargs.get("cache") is None and kwargs.get("past_key_values") is None:
            kwargs[arg] = IntKVCache(n, quantizer, key_transform)
            return args, kwargs
        return None
    return model.register_forward_pre_hook(give_cache, with_kwargs=True)
