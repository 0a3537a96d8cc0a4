"""A new export format is one class: an exporter declared in this file alone is registered, asked for by
name in ``save.formats`` and run through the CLI on a tiny random model."""

from __future__ import annotations

import json

import pytest

from llmc.export import Exporter
from llmc.registry import EXPORTER_REGISTRY, register_exporter


class ToyExporter(Exporter):
    """Writes each quantized linear's integer codes' shape and the method's label: enough to show that the
    pipeline hands an exporter the fake-quant model and what the method left."""
    name = "toy"
    stages = ("fake_quant",)

    def export(self, adapter, quantized, cfg, stage):
        from llmc.quant.fake_linear import FakeQuantLinear
        out = self.target(cfg, stage)
        out.mkdir(parents=True, exist_ok=True)
        layers = {n: list(m.export_int()[0].shape) for n, m in adapter.model.named_modules()
                  if isinstance(m, FakeQuantLinear)}
        (out / "toy.json").write_text(json.dumps({"label": quantized.label, "layers": layers}))
        return out


@pytest.fixture
def toy_exporter():
    register_exporter("toy")(ToyExporter)
    yield ToyExporter
    EXPORTER_REGISTRY.pop("toy", None)


def _config(tmp_path, model) -> str:
    cfg = tmp_path / "toy_rtn.yml"
    cfg.write_text(f"model: {{path: {model}, torch_dtype: float32, device: cpu}}\n"
                   "quant: {method: RTN, weight: {bit: 4, granularity: per_channel}, "
                   "act: {bit: 8, granularity: per_token}}\n"
                   "eval: {name: [wikitext2], eval_pos: [fake_quant], limit: 1, seq_len: 64}\n"
                   f"save: {{save_path: {tmp_path / 'results'}, formats: [toy]}}\n")
    return str(cfg)


def test_an_exporter_declared_here_runs_through_the_cli(toy_exporter, tiny_model_dir, tmp_path, capsys):
    from llmc.__main__ import main
    assert main(["--config", _config(tmp_path, tiny_model_dir), "--quiet"]) == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "results" / "toy_rtn.json").read_text())
    assert record["status"] == "complete"
    out = tmp_path / "results" / "toy_rtn_toy_fake_quant"
    assert record["exports"] == [str(out)]
    written = json.loads((out / "toy.json").read_text())
    assert written["label"] == "RTN"
    assert written["layers"]["model.layers.0.mlp.down_proj"] == [32, 64] and len(written["layers"]) == 14


def test_an_unknown_format_is_one_line_before_the_model_loads(tmp_path, capsys):
    from llmc.__main__ import main
    code = main(["--config", _config(tmp_path, "./no/such/model")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: save.formats: no exporter named 'toy' (available: ")
    assert {"executorch", "gguf", "hf", "packed"} <= set(err[0].split("(available: ")[1].split(")")[0].split(", "))
