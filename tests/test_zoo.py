"""The embedded-model zoo: pinned checksums are enforced, caches are written atomically."""

import pytest

from llmc.errors import UserError
from llmc.models.loading import materialize_gguf
from llmc.utils import sha256_file
from llmc_slm import zoo


def test_corrupted_gguf_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMQUANT_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 1000)
    with pytest.raises(UserError, match="sha256"):
        materialize_gguf(bad, zoo.PACKAGED["smollm2-135m-instruct"].sha256)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("config.json"))


def test_split_parts_with_wrong_checksum_are_refused_and_leave_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMQUANT_CACHE", str(tmp_path / "cache"))
    parts = []
    for i in range(2):
        p = tmp_path / f"part{i}.bin"
        p.write_bytes(bytes([i]) * 100)
        parts.append(p)
    model = zoo.PackagedGGUF("fake", (("a", "1", "x"), ("b", "1", "y")), "0" * 64, "", "", "reinstall")
    it = iter(parts)
    with pytest.raises(UserError, match="sha256"):
        zoo.gguf_file(model, locate=lambda *a: next(it))
    assert list((tmp_path / "cache").rglob("*.gguf")) == []


def test_split_parts_with_right_checksum_assemble_in_order(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMQUANT_CACHE", str(tmp_path / "cache"))
    parts = []
    for i in range(3):
        p = tmp_path / f"part{i}.bin"
        p.write_bytes(bytes([65 + i]) * 10)
        parts.append(p)
    whole = tmp_path / "whole"
    whole.write_bytes(b"".join(p.read_bytes() for p in parts))
    model = zoo.PackagedGGUF("fake", tuple(("d", "1", str(i)) for i in range(3)), sha256_file(whole), "", "", "")
    out = zoo.gguf_file(model, locate=lambda d, v, rel: parts[int(rel)])
    assert out.read_bytes() == whole.read_bytes()


def test_missing_package_names_the_install_command():
    model = zoo.PackagedGGUF("ghost", (("no-such-dist-xyz", "1.0", "f.gguf"),), "0" * 64, "", "", "pip install ghost")
    with pytest.raises(UserError, match="no-such-dist-xyz==1.0: pip install ghost"):
        zoo.gguf_file(model)


def test_embedded_smollm2_matches_its_pinned_sha256(smollm2_source):
    assert smollm2_source.kind == "gguf"
    assert sha256_file(smollm2_source.path) == zoo.PACKAGED["smollm2-135m-instruct"].sha256


def test_unknown_name_is_not_claimed_by_the_zoo():
    assert zoo.zoo_source("not-a-zoo-model") is None


def test_gemma3_random_twin_has_the_published_shape():
    """The exact architecture, built on the meta device (no memory): 268,098,176 parameters, 62.6% of them
    the tied 262,144 x 640 embedding; a global attention layer every sixth."""
    import json
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = json.loads((zoo.CONFIG_DIR / zoo.RANDOM["gemma-3-270m-random"].config_file).read_text())
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
    n = sum(p.numel() for p in model.parameters())
    assert n == 268_098_176 and model.model.embed_tokens.weight.numel() / n == pytest.approx(0.6258, abs=1e-4)
    assert cfg["layer_types"][5::6] == ["full_attention"] * 3 and cfg["layer_types"].count("full_attention") == 3


def test_gemma3_config_matches_the_embedded_gguf():
    """Where the Gemma-3 packages are installed (``.[gemma]``), the architecture file agrees with the GGUF's
    own metadata."""
    import json
    try:
        path = zoo.gguf_file(zoo.PACKAGED["gemma-3-270m"])
    except UserError as e:
        pytest.skip(str(e))
    from gguf import GGUFReader
    fields = GGUFReader(str(path)).fields
    value = lambda key: fields[key].contents()   # noqa: E731
    cfg = json.loads((zoo.CONFIG_DIR / "gemma-3-270m.json").read_text())
    assert value("general.architecture") == "gemma3"
    assert (value("gemma3.block_count"), value("gemma3.embedding_length"), value("gemma3.feed_forward_length"),
            value("gemma3.attention.head_count"), value("gemma3.attention.head_count_kv"),
            value("gemma3.attention.key_length"), value("gemma3.attention.sliding_window")) == \
        (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"],
         cfg["num_key_value_heads"], cfg["head_dim"], cfg["sliding_window"])
    assert value("gemma3.rope.freq_base") == cfg["rope_parameters"]["full_attention"]["rope_theta"]
    assert len(fields["tokenizer.ggml.tokens"].data) == cfg["vocab_size"]      # count only: no decoding
