"""Integer deployment: IntLinear computes what FakeQuantLinear computes, with integer kernels; deploy_integer
and load_deployed give the same model; the packed checkpoint is small."""

import copy

import pytest
import torch
from torch import nn

from conftest import tiny_adapter
from llmc.config import load_config
from llmc.data.calib import CalibData
from llmc.deploy import deploy_integer, deployment_summary, load_deployed, to_compute_dtype
from llmc.quant.fake_linear import FakeQuantLinear
from llmc.quant.int_linear import (IntLinear, int4pack_block, int_mm, int_mm_info, onednn_available,
                                   pack_int4_signed, quantize_act_int8, unpack_int4_signed, unpack_int4pack_cpu)
from llmc.quant.packed import pack_codes, save_packed_model
from llmc.quant.quantizer import Quantizer
from llmc.quant.transforms import OnlineHadamard
from llmc.registry import ALGO_REGISTRY
from llmc.pipeline import quantize_model, quantize_stages

BACKENDS = ["auto", "int_mm"]


def _fake(wbit, wsym, gran="per_channel", act=(8, True, "per_token", False), hadamard=False, bias=True,
          in_f=64, out_f=48, seed=0, group=16):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(out_f, in_f, generator=g) * 0.1 + 0.01)
        if bias:
            lin.bias.copy_(torch.randn(out_f, generator=g))
    wq = Quantizer(bit=wbit, symmetric=wsym, granularity=gran, group_size=group)
    aq = None
    if act is not None:
        abit, asym, agran, static = act
        aq = Quantizer(bit=abit, symmetric=asym, granularity=agran, static=static)
    fq = FakeQuantLinear(lin, wq, aq, input_transform=OnlineHadamard(in_f) if hadamard else None)
    if aq is not None and aq.static:
        fq.calibrating = True
        fq(torch.randn(4, 16, in_f, generator=g) * 2 + 0.3)
        fq.calibrating = False
        fq.act_quantizer.freeze()
    return fq


def _inputs(in_f=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 20, in_f, generator=g) * 2 + 0.3, torch.randn(1, 1, in_f, generator=g),
            torch.randn(7, in_f, generator=g) * 0.01]


def _assert_matches(fq, il, tol=1e-5):
    for x in _inputs(fq.in_features):
        with torch.no_grad():
            want, got = fq(x), il(x)
        assert got.shape == want.shape and got.dtype == want.dtype
        err = ((got - want).abs().max() / want.abs().max()).item()
        assert err < tol, (il, err)


CASES = {
    "w8 sym, a8 sym per-token": dict(wbit=8, wsym=True),
    "w8 asym, a8 sym": dict(wbit=8, wsym=False),
    "w8 sym, a8 asym": dict(wbit=8, wsym=True, act=(8, False, "per_token", False)),
    "w8 asym, a8 asym (SpinQuant W8A8)": dict(wbit=8, wsym=False, act=(8, False, "per_token", False)),
    "w4 sym": dict(wbit=4, wsym=True),
    "w4 asym (OmniQuant W4A8)": dict(wbit=4, wsym=False),
    "w4 asym, a4 asym": dict(wbit=4, wsym=False, act=(4, False, "per_token", False)),
    "w8 per-tensor": dict(wbit=8, wsym=True, gran="per_tensor"),
    "static per-tensor act": dict(wbit=8, wsym=True, act=(8, True, "per_tensor", True)),
    "static asym per-tensor act": dict(wbit=4, wsym=False, act=(8, False, "per_tensor", True)),
    "dynamic per-tensor act": dict(wbit=8, wsym=True, act=(8, True, "per_tensor", False)),
    "hadamard": dict(wbit=4, wsym=True, hadamard=True),
    "no bias": dict(wbit=8, wsym=True, bias=False),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("unpack", ["load", "call"])
@pytest.mark.parametrize("case", list(CASES))
def test_int_linear_matches_fake_quant(case, unpack, backend):
    fq = _fake(**CASES[case])
    il = IntLinear.from_fake(fq, unpack=unpack, backend=backend)
    assert il.kind == "int"
    if unpack == "call" and fq.weight_quantizer.bit <= 4:
        assert il.unpack == "call" and il.qweight.dtype == torch.uint8
        assert il.qweight.shape == (48, 32)          # two codes per byte in memory too
    _assert_matches(fq, il)


@pytest.mark.parametrize("case", ["per-group w4 asym", "per-group w8 sym", "weight-only w4", "per-head act"])
def test_fallback_kernels_are_bit_exact(case):
    kw = {"per-group w4 asym": dict(wbit=4, wsym=False, gran="per_group"),
          "per-group w8 sym": dict(wbit=8, wsym=True, gran="per_group"),
          "weight-only w4": dict(wbit=4, wsym=False, act=None),
          "per-head act": dict(wbit=8, wsym=True)}[case]
    fq = _fake(**kw)
    if case == "per-head act":
        fq.act_quantizer = Quantizer(bit=8, symmetric=True, granularity="per_head", head_dim=16)
    il = IntLinear.from_fake(fq)
    assert il.kind == "dequant" and il.qweight.dtype == torch.int8
    for x in _inputs():
        with torch.no_grad():
            assert torch.equal(il(x), fq(x))


def _int4pack_by_hand(u: torch.Tensor, block: int) -> torch.Tensor:
    """aten's int4 CPU packing written out: per block of ``block`` rows and per input column, byte ``j``
    holds row ``j`` in its low nibble and row ``j + block / 2`` in its high one."""
    out_f, in_f = u.shape
    rows = u.to(torch.uint8).reshape(out_f // block, block, in_f).transpose(1, 2)     # [blocks, in, block]
    half = block // 2
    return (rows[..., :half] | (rows[..., half:] << 4)).reshape(out_f, in_f // 2)


@pytest.mark.parametrize("block", [64, 32])
def test_int4_packing_is_read_in_either_cpu_layout(block):
    """torch packs int4 weights in blocks of 64 rows with its AVX-512 kernels and of 32 with AVX2 ones (found on
    an AVX2-only EPYC, where the int4 layers refused to build): both are read back, the right one is found,
    and a layout that is neither is an error; this machine's own packing is one of them."""
    g = torch.Generator().manual_seed(block)
    u = torch.randint(0, 16, (128, 64), generator=g, dtype=torch.int32)
    packed = _int4pack_by_hand(u, block)
    assert int4pack_block(packed, u) == block
    assert torch.equal(unpack_int4pack_cpu(packed, 128, 64, block), u.to(torch.int16))
    with pytest.raises(RuntimeError, match="not a layout this module reads"):
        int4pack_block(packed.flip(0), u)
    native = torch.ops.aten._convert_weight_to_int4pack_for_cpu(u, 1)
    assert int4pack_block(native, u) in (64, 32)


WEIGHT_ONLY = {"w8 sym per-channel": (8, True, "per_channel", -1), "w8 asym per-channel": (8, False, "per_channel", -1),
               "w8 per-tensor": (8, True, "per_tensor", -1), "w4 sym g32": (4, True, "per_group", 32),
               "w4 asym g64": (4, False, "per_group", 64)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", list(WEIGHT_ONLY))
def test_weight_only_kernels_match_fake_quant(case, dtype):
    """W8A16 / W4A16: PyTorch's int8 and int4 weight-only CPU kernels compute the fake-quant layer (the float
    activations times the dequantized weights) and keep 1 or 1/2 byte per weight in memory."""
    bit, sym, gran, group = WEIGHT_ONLY[case]
    fq = _fake(bit, sym, gran, act=None, in_f=128, out_f=64, group=group).to(dtype)
    il = IntLinear.from_fake(fq)
    assert il.kind == "weight_only"
    assert il.qweight.numel() * il.qweight.element_size() == 64 * 128 * bit // 8
    codes, scale, zero = fq.export_int()
    reference = fq.weight_quantizer.dequantize(codes, scale, zero, torch.float32)
    torch.testing.assert_close(il.dequantized_weight(torch.float32), reference, atol=1e-2 * float(scale.max()), rtol=0)
    for x in _inputs(128):
        x = x.to(dtype)
        with torch.no_grad():
            want, got = fq(x), il(x)
        assert got.dtype == want.dtype and got.shape == want.shape
        err = ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()
        assert err < (1e-5 if dtype == torch.float32 else 2e-2), err


def test_activation_codes_equal_the_quantizers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 40, generator=g) * 3
    x[2] = 0  # an all-zero token
    for q in (Quantizer(bit=8, granularity="per_token"), Quantizer(bit=8, symmetric=False, granularity="per_token"),
              Quantizer(bit=4, symmetric=False, granularity="per_token"), Quantizer(bit=8, granularity="per_tensor")):
        a, s, z = quantize_act_int8(x, q)
        codes, scale, zero = q.quantize_with_params(x)
        codes, a = codes.to(torch.int32), a.to(torch.int32)
        if q.symmetric:
            assert z is None and torch.equal(a, codes)
            u, _, _ = quantize_act_int8(x, q, unsigned=True)
            assert torch.equal(u.to(torch.int32) - 128, a)
        elif q.bit <= 7:            # stored as q - z: no correction needed
            assert z is None and torch.equal(a + zero.to(torch.int32), codes)
        else:                       # stored as q - 128, z' = z - 128
            assert torch.equal(a + 128, codes) and torch.equal(z + 128, zero.to(torch.int32))
        assert torch.equal(s.expand(9, 1), scale.float().expand(9, 1))
    # a large bf16 input takes the path that reads it in bf16: the same codes and scales
    big = (torch.randn(64, 4864, generator=g) * 4).to(torch.bfloat16)
    big[3] = 0
    q = Quantizer(bit=8, granularity="per_token")
    a, s, _ = quantize_act_int8(big, q)
    codes, scale, _ = q.quantize_with_params(big)
    assert torch.equal(a, codes) and torch.equal(s, scale.float())


def test_int_mm_any_shape_and_int4_unpack():
    g = torch.Generator().manual_seed(0)
    for m, k, n in [(1, 7, 5), (3, 64, 48), (17, 24, 8)]:
        a = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=g)
        b = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)
        assert torch.equal(int_mm(a, b.t()), (a.to(torch.int64) @ b.to(torch.int64).t()).to(torch.int32))
    w = torch.randint(-8, 8, (6, 10), dtype=torch.int8, generator=g)
    assert torch.equal(pack_int4_signed(w), pack_codes(w, 4))      # the checkpoint's nibble layout
    assert torch.equal(unpack_int4_signed(pack_int4_signed(w)), w)


@pytest.mark.parametrize("m,k,n", [(64, 64, 48), (1, 7, 5), (16, 640, 2048), (33, 2048, 640)])
@pytest.mark.parametrize("layout", ["column-major b (IntLinear's)", "row-major b"])
def test_cublaslt_operands_are_padded_tn_and_give_the_same_product(m, k, n, layout):
    """What int_mm hands cuBLASLt's int8 GEMM on CUDA (shaped on the CPU here; the GPU run is
    benchmarks/gpu_check.py): a row-major a with M > 16 and K a multiple of 8, a column-major b (the "TN"
    layout; a row-major b was refused on an H200 at M = 48, K = 64, N = 64) with N a multiple of 8, whose product holds
    a @ b in its top-left corner; IntLinear's column-major b is passed through without a copy."""
    from llmc.quant.int_linear import cublaslt_int8_operands
    g = torch.Generator().manual_seed(m + k + n)
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=g)
    codes = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)     # [out, in]
    b = codes.t() if layout.startswith("column") else codes.t().contiguous()
    pa, pb = cublaslt_int8_operands(a, b)
    assert pa.shape[0] > 16 and pa.shape[1] % 8 == 0 and pb.shape[1] % 8 == 0 and pa.shape[1] == pb.shape[0]
    assert pa.is_contiguous() and pb.t().is_contiguous()
    if layout.startswith("column") and (m > 16 and k % 8 == 0 and n % 8 == 0):
        assert pb.data_ptr() == codes.data_ptr()
    want = (a.to(torch.int64) @ b.to(torch.int64)).to(torch.int32)
    assert torch.equal((pa.to(torch.int64) @ pb.to(torch.int64)).to(torch.int32)[:m, :n], want)


@pytest.mark.parametrize("flags", [{"avx2"}, {"avx2", "avx512_vnni"}], ids=["no int8 dot", "vnni"])
def test_int_mm_without_int8_dot_instructions_is_an_exact_float64_gemm(monkeypatch, flags):
    """On a CPU without VNNI or AMX, torch._int_mm is a slow reference kernel: int_mm computes the same integers
    with a float64 GEMM instead (exact at the extremes of int8 over a long reduction), and says so in the
    record's kernel information; with VNNI it calls torch._int_mm."""
    import llmc.quant.int_linear as il_mod
    import llmc.utils
    monkeypatch.setattr(llmc.utils, "cpu_flags", lambda: set(flags))
    monkeypatch.setattr(il_mod, "_INT8_DOT", None)
    calls = []
    real = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: calls.append(1) or real(a, b))
    g = torch.Generator().manual_seed(1)
    a = torch.randint(-128, 128, (5, 8192), dtype=torch.int8, generator=g)
    b = torch.randint(-128, 128, (8192, 3), dtype=torch.int8, generator=g)
    a[0], b[:, 0] = -128, -128                                   # 8192 * 2^14 = 2^27 in one sum
    want = (a.to(torch.int64) @ b.to(torch.int64)).to(torch.int32)
    assert torch.equal(int_mm(a, b), want) and want[0, 0] == 2 ** 27
    vnni = "avx512_vnni" in flags
    assert bool(calls) is vnni
    assert int_mm_info()["int_mm_cpu"].startswith("torch._int_mm" if vnni else "float64 GEMM")


def test_deepcopy_and_memory():
    fq = _fake(4, True)
    il = IntLinear.from_fake(fq)
    clone = copy.deepcopy(il)
    x = _inputs()[0]
    assert torch.equal(clone(x), il(x)) and clone.backend == il.backend
    packed = IntLinear.from_fake(fq, unpack="call")
    assert packed.storage_bytes() < il.storage_bytes()
    assert il.storage_bytes() < 48 * 64 * 1.5 + 48 * 16    # ~1 byte per weight + scales / corrections / bias
    if onednn_available():
        assert il.backend == "onednn" and il.qweight is None      # one copy of the weight: oneDNN's packed one
        assert IntLinear.from_fake(_fake(8, False)).backend == "int_mm"   # needs the zero-point correction


# ------------------------------------------------------------------------------------ whole models
def _quantized(family, wbit, extra=(), hidden=64, ffn=128, vocab=256, dtype=torch.float32, embed_bit="null"):
    """An RTN-quantized tiny model; the packed checkpoint keeps embeddings and lm_head in float unless
    ``embed_bit`` is given, so that reloads are exact."""
    adapter = tiny_adapter(family, hidden_size=hidden, intermediate_size=ffn, vocab_size=vocab)
    adapter.model.to(dtype)
    method = "RTN"
    cfg = load_config(None, ["--quant.method", method, "--quant.weight.bit", str(wbit),
                             "--quant.weight.granularity", "per_channel", "--quant.act.bit", "8",
                             "--quant.act.granularity", "per_token", "--calib.n_samples", "4",
                             "--calib.seq_len", "16", "--save.real_embed_bit", embed_bit, *extra])
    calib = CalibData(torch.randint(0, vocab, (4, 16), generator=torch.Generator().manual_seed(0)), {})
    quantize_model(adapter, cfg, calib)
    return adapter, cfg


IDS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("wbit, extra", [(8, ()), (4, ("--quant.weight.symmetric", "false")),
                                         (8, ("--quant.act.granularity", "per_tensor", "--quant.act.static", "true")),
                                         (8, ("--quant.weight.symmetric", "false", "--quant.act.symmetric", "false"))])
def test_deploy_integer_model_matches_fake_quant(tmp_path, any_family, wbit, extra):
    adapter, cfg = _quantized(any_family, wbit, extra)
    adapter.blocks[0].mlp.down_proj.input_transform = OnlineHadamard(128)   # an online transform travels too
    # every fake-quant layer's input and output in the fake model's forward pass
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, args, out, n=n: seen.__setitem__(n, (args[0], out)))
             for n, m in adapter.model.named_modules() if isinstance(m, FakeQuantLinear)]
    with torch.no_grad():
        fake = adapter.model(input_ids=IDS).logits
    for h in hooks:
        h.remove()
    save_packed_model(adapter, cfg, tmp_path / "packed")
    deployed = deploy_integer(copy.deepcopy(adapter.model))
    summary = deployment_summary(deployed)
    assert summary["fake_layers"] == 0 and summary["int_layers"] == 7 * len(adapter.blocks) == len(seen)
    assert not any(isinstance(m, FakeQuantLinear) for m in deployed.modules())
    # layer by layer on the same inputs: the same integer arithmetic, float32 rounding apart
    with torch.no_grad():
        for name, (x, want) in seen.items():
            got = deployed.get_submodule(name)(x)
            assert ((got - want).abs().max() / want.abs().max()).item() < 1e-5, name
        got = deployed(input_ids=IDS).logits
    # whole model: float32 rounding of the accumulations; an activation lying within ~1e-7 of a rounding
    # boundary can get the neighbouring code (a tie broken differently), which then propagates a little
    rel = (got - fake).abs() / fake.abs().max()
    assert rel.median().item() < 1e-5 and rel.max().item() < 1e-2, (rel.median().item(), rel.max().item())
    # the packed checkpoint loads into the same integer model
    loaded = load_deployed(tmp_path / "packed")
    with torch.no_grad():
        again = loaded(input_ids=IDS).logits
    torch.testing.assert_close(again, got, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("wbit, weight", [(8, ["--quant.weight.granularity", "per_channel"]),
                                          (4, ["--quant.weight.granularity", "per_group", "--quant.weight.group_size",
                                               "32", "--quant.weight.symmetric", "false"])])
def test_a_weight_only_model_deploys_with_the_weight_only_kernels(tmp_path, wbit, weight):
    """W8A16 / W4A16 end to end: the packed checkpoint loads into weight_only layers (int4 where the output
    width is a multiple of 64: here every projection but k/v, which keep the dequant path) and gives the
    fake-quant model's logits."""
    adapter = tiny_adapter("llama", hidden_size=64, intermediate_size=128, vocab_size=256)
    cfg = load_config(None, ["--quant.method", "RTN", "--quant.weight.bit", str(wbit), *weight,
                             "--save.real_embed_bit", "null"])
    quantize_model(adapter, cfg, None)
    with torch.no_grad():
        fake = adapter.model(input_ids=IDS).logits
    save_packed_model(adapter, cfg, tmp_path / "packed")
    loaded = load_deployed(tmp_path / "packed")
    kinds = deployment_summary(loaded)["kinds"]
    expected = {"weight_only:w8": 7 * len(adapter.blocks)} if wbit == 8 else \
        {"weight_only:w4": 5 * len(adapter.blocks), "dequant:w4": 2 * len(adapter.blocks)}
    assert dict(kinds) == expected
    with torch.no_grad():
        got = loaded(input_ids=IDS).logits
        one = loaded(input_ids=IDS[:1, :4]).logits        # few tokens: the kernel path for the 8-bit layers too
        fake_one = adapter.model(input_ids=IDS[:1, :4]).logits
    assert rel_max(got, fake) < 1e-4 and rel_max(one, fake_one) < 1e-4


def rel_max(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_bf16_deployment_is_close_and_compute_dtype_cast(tmp_path):
    adapter, cfg = _quantized("qwen2", 8, dtype=torch.bfloat16)
    with torch.no_grad():
        fake = adapter.model(input_ids=IDS).logits.float()
    deployed = deploy_integer(copy.deepcopy(adapter.model))
    with torch.no_grad():
        got = deployed(input_ids=IDS).logits
    assert got.dtype == torch.bfloat16
    # bf16 rounds the fake model's s*q products and dot products; the integer model rounds once
    rel = (got.float() - fake).abs() / fake.abs().max()
    assert rel.median().item() < 1e-2 and rel.max().item() < 5e-2
    # a float32-packed checkpoint can run in bfloat16 with the integer scales kept in float32
    f32, cfg32 = _quantized("qwen2", 8)
    save_packed_model(f32, cfg32, tmp_path / "p32")
    model = to_compute_dtype(load_deployed(tmp_path / "p32"), torch.bfloat16)
    lin = model.model.layers[0].self_attn.q_proj
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16 and lin.w_scale.dtype == torch.float32
    with torch.no_grad():
        assert model(input_ids=IDS).logits.dtype == torch.bfloat16


def test_packed_checkpoint_size_against_bf16(tmp_path):
    """Linears dominate this model (hidden 256, ffn 1024, vocab 64). The packed checkpoint stores the (tied)
    embedding as int8 rows with float32 scales (the default ``save.real_embed_bit: 8``), norms in bfloat16,
    per-channel scales in float32; the baseline stores everything in bfloat16."""
    from llmc.quant.packed_info import checkpoint_size, storage_breakdown
    from llmc_slm.tracks.inference import save_baseline_checkpoint
    sizes = {}
    for wbit in (4, 8):
        adapter, cfg = _quantized("llama", wbit, hidden=256, ffn=1024, vocab=64, dtype=torch.bfloat16, embed_bit="8")
        save_packed_model(adapter, cfg, tmp_path / f"w{wbit}")
        sizes[wbit] = checkpoint_size(tmp_path / f"w{wbit}")
        roles = storage_breakdown(tmp_path / f"w{wbit}")["roles"]
        assert set(roles["weight_codes"]["dtypes"]) == {"U8"} and set(roles["weight_scales"]["dtypes"]) == {"F32"}
        assert roles["embeddings"]["dtypes"] == {"I8": 64 * 256, "F32": 64 * 4}   # codes + one scale per row
        if adapter.model.config.tie_word_embeddings:
            assert "lm_head" not in roles                                         # tied: stored once
        else:
            assert roles["lm_head"]["dtypes"] == {"I8": 64 * 256, "F32": 64 * 4}
        n_lin = sum(m.in_features * m.out_features for b in adapter.blocks for m in adapter.block_linears(b).values())
        assert roles["weight_codes"]["bytes"] == n_lin * wbit // 8
        breakdown = storage_breakdown(tmp_path / f"w{wbit}")
        vocab = sum(roles[r]["bytes"] for r in ("embeddings", "lm_head") if r in roles)
        assert breakdown["embedding_share"] == pytest.approx(vocab / breakdown["tensor_bytes"])
        assert 0 < breakdown["embedding_share"] < 0.5                             # linears dominate here
    base = tiny_adapter("llama", hidden_size=256, intermediate_size=1024, vocab_size=64)
    save_baseline_checkpoint(base.model, None, tmp_path / "bf16", torch.bfloat16)
    bf16 = checkpoint_size(tmp_path / "bf16")
    assert set(storage_breakdown(tmp_path / "bf16")["roles"]["embeddings"]["dtypes"]) == {"BF16"}
    assert sizes[4] < 0.32 * bf16, (sizes, bf16)
    assert sizes[8] < 0.55 * bf16, (sizes, bf16)


def test_unpack_call_keeps_4bit_packed_in_memory(tmp_path):
    adapter, cfg = _quantized("llama", 4)
    save_packed_model(adapter, cfg, tmp_path / "p")
    a = load_deployed(tmp_path / "p")
    b = load_deployed(tmp_path / "p", unpack="call")
    assert deployment_summary(b)["int_layer_bytes"] < 0.6 * deployment_summary(a)["int_layer_bytes"]
    with torch.no_grad():
        rel = (b(input_ids=IDS).logits - a(input_ids=IDS).logits).abs() / a(input_ids=IDS).logits.abs().max()
    assert rel.median().item() < 1e-5 and rel.max().item() < 1e-2


@pytest.mark.parametrize("backend", ["onednn", "int_mm"])
def test_backends_agree_on_a_model(backend):
    if backend == "onednn" and not onednn_available():
        pytest.skip("oneDNN int8 linear unavailable here")
    adapter, _ = _quantized("llama", 8)
    ref = deploy_integer(copy.deepcopy(adapter.model), backend="int_mm")
    other = deploy_integer(copy.deepcopy(adapter.model), backend=backend)
    assert all(m.backend == backend for m in other.modules() if isinstance(m, IntLinear))
    with torch.no_grad():
        a, b = other(input_ids=IDS).logits, ref(input_ids=IDS).logits
    rel = (a - b).abs() / b.abs().max()
    assert rel.median().item() < 1e-5 and rel.max().item() < 1e-2


def test_shared_activation_quantization_is_safe():
    """q/k/v read one tensor: quantized once; an in-place change of that tensor is not served stale."""
    fq1, fq2 = _fake(8, True, seed=0), _fake(8, True, seed=1)
    il1, il2 = IntLinear.from_fake(fq1), IntLinear.from_fake(fq2)
    x = _inputs()[0]
    with torch.no_grad():
        y1, y2 = il1(x), il2(x)
        torch.testing.assert_close(y2, fq2(x), rtol=1e-5, atol=1e-5 * fq2(x).abs().max().item())
        x.mul_(3)
        torch.testing.assert_close(il2(x), fq2(x), rtol=1e-5, atol=1e-5 * fq2(x).abs().max().item())
        with torch.inference_mode():
            xi = torch.randn(3, 64)
            torch.testing.assert_close(il1(xi), fq1(xi), rtol=1e-5, atol=1e-5 * fq1(xi).abs().max().item())
