"""The SLMQuant paper's published numbers, as printed (transcribed from its Tables 1-4), and its claims.

Source: Wang, Zeng, Guo, Ma, Liu, Liu, "SLMQuant: Benchmarking Small Language Model Quantization for
Practical Deployment", RichMediaGAI '25, doi 10.1145/3746262.3761973 (figures as printed; the project's
transcription is shared/reference/published.md, and ``tests/test_reports.py`` checks these values against
it). Accuracies are percentages, perplexities plain, memory in MB, time in minutes, MACs in G.

Printed oddities kept as printed: Table 2's SpinQuant W8A8 SLMQ_perf 100.0 is capped (the formula gives
100.35); Table 3's "Model Size" is calflops' parameter count in millions printed as MB (protocol.md).
"""

from __future__ import annotations

CITATION = ('Wang, Zeng, Guo, Ma, Liu, Liu, "SLMQuant: Benchmarking Small Language Model Quantization for '
            'Practical Deployment", RichMediaGAI \'25, doi 10.1145/3746262.3761973')
DOI = "10.1145/3746262.3761973"

COMPRESSION_COLUMNS = ("mmlu", "arc_challenge", "arc_easy", "piqa", "hellaswag", "wikitext2", "slmq_perf")


def _rows(rows):
    return [dict(zip(("method", "bits") + COMPRESSION_COLUMNS, r)) for r in rows]


# Table 1: SmolLM-135M, compression performance (MMLU, ARC-c, ARC-e, PIQA, HellaSwag, Wiki ppl, SLMQ_perf)
TABLE1 = {"model": "SmolLM-135M", "rows": _rows([
    ("Full Prec.", "FP16", 31.15, 29.78, 58.84, 69.60, 42.14, 15.44, None),
    ("SmoothQuant", "W8A8", 31.14, 29.69, 58.54, 68.55, 42.03, 15.67, 99.32),
    ("OmniQuant", "W8A8", 31.11, 29.10, 58.80, 68.06, 41.85, 15.89, 98.65),
    ("SpinQuant", "W8A8", 31.14, 29.52, 58.50, 68.51, 42.08, 15.49, 99.41),
    ("SmoothQuant", "W4A8", 27.64, 27.30, 46.76, 63.33, 36.36, 44.64, 81.15),
    ("OmniQuant", "W4A8", 25.74, 25.51, 35.82, 54.84, 29.93, 448.82, 69.69),
    ("SpinQuant", "W4A8", 28.28, 27.74, 50.76, 67.95, 38.42, 17.29, 91.45),
])}

# Table 2: Qwen2.5-0.5B, compression performance
TABLE2 = {"model": "Qwen2.5-0.5B", "rows": _rows([
    ("Full Prec.", "FP16", 33.46, 32.00, 58.33, 70.35, 51.29, 13.07, None),
    ("SmoothQuant", "W8A8", 33.44, 32.34, 58.21, 69.86, 51.16, 13.26, 99.74),
    ("OmniQuant", "W8A8", 33.55, 32.59, 58.25, 70.40, 51.02, 14.54, 98.65),
    ("SpinQuant", "W8A8", 33.35, 32.94, 59.13, 69.81, 51.15, 13.19, 100.0),
    ("SmoothQuant", "W4A8", 27.53, 27.91, 38.30, 60.99, 34.78, 113.06, 71.80),
    ("OmniQuant", "W4A8", 25.74, 25.92, 31.73, 55.50, 28.02, 1614.49, 64.09),
    ("SpinQuant", "W4A8", 31.19, 28.75, 50.67, 67.52, 44.16, 20.54, 86.59),
])}

# Table 3: inference performance (W8A8): GPU Mem. (MB), Model Size (printed MB), MACs (G), SLMQ_infer
TABLE3 = {"bits": "W8A8", "rows": [
    dict(zip(("method", "model", "gpu_mem_mb", "model_size_mb", "macs_g", "slmq_infer"), r)) for r in [
    ("Full Prec.", "SmolLM-135M", 264.5, 134.52, 17.21, None),
    ("Full Prec.", "QWen2.5-0.5B", 951.91, 494.03, 63.23, None),
    ("SmoothQuant", "SmolLM-135M", 256.97, 134.52, 3.64, 285.3),
    ("SmoothQuant", "QWen2.5-0.5B", 826.24, 494.03, 17.43, 227.2),
    ("OmniQuant", "SmolLM-135M", 179.36, 92.29, 3.64, 298.1),
    ("OmniQuant", "QWen2.5-0.5B", 547.49, 284.33, 17.44, 252.9),
    ("SpinQuant", "SmolLM-135M", 193.6, 133.24, 3.64, 290.1),
    ("SpinQuant", "QWen2.5-0.5B", 567.67, 394.46, 17.45, 241.5),
]]}

# Table 4: quantization consumption (W8A8, NVIDIA A800): GPU Memory (MB), Quant Time (min), SLMQ_quant
TABLE4 = {"bits": "W8A8", "device": "NVIDIA A800", "rows": [
    dict(zip(("method", "model", "gpu_mem_mb", "quant_time_min", "slmq_quant"), r)) for r in [
        ("SmoothQuant", "SmolLM-135M", 828.31, 2.02, 549.4),
        ("SmoothQuant", "QWen2.5-0.5B", 2254.33, 2.2, 559.6),
        ("OmniQuant", "SmolLM-135M", 2769.60, 12.63, 106.3),
        ("OmniQuant", "QWen2.5-0.5B", 3713.23, 17.03, 100.0),
        ("SpinQuant", "SmolLM-135M", 1558.56, 14.17, 144.2),
        ("SpinQuant", "QWen2.5-0.5B", 3398.21, 13.05, 120.4),
    ]]}

CLAIMS = {
    1: "W8A8 keeps accuracy (relative drop under 0.5% on average) for every method.",
    2: "W4A8 degrades sharply, most on knowledge-heavy tasks; SpinQuant degrades least.",
    3: "OmniQuant collapses at W4A8 (WikiText2 ppl 448.82 and 1614.49).",
    4: "SmolLM is more robust than Qwen at W4A8.",
    5: "SmoothQuant is the cheapest to quantize; OmniQuant and SpinQuant cost 6-7x more time.",
}


# Which of the paper's two models each of ours stands in for, by a word of our model's name: its Tables 1 / 2
# (compression) and its rows of Tables 3 / 4. A model with no counterpart (Gemma-3-270M, the third
# architecture the paper announces but does not table) is compared with nothing.
COUNTERPARTS = (("smollm", "TABLE1", "smol"), ("qwen", "TABLE2", "qwen"))


def compression_table(model: str) -> dict | None:
    """The paper's table for one of our models (Table 1 for a SmolLM model, Table 2 for a Qwen one), or
    None when the paper has no such model."""
    for word, table, _ in COUNTERPARTS:
        if word in model.lower():
            return globals()[table]
    return None


def paper_model(model: str, table: dict) -> str | None:
    """The paper's spelling of the model in Tables 3/4 matching ``model`` (ours), or None."""
    for word, _, paper_word in COUNTERPARTS:
        if word in model.lower():
            return next((n for n in sorted({r["model"] for r in table["rows"]}) if paper_word in n.lower()), None)
    return None


def row(table: dict, method: str, bits: str | None = None, model: str | None = None) -> dict | None:
    for r in table["rows"]:
        if r["method"] == method and (bits is None or r.get("bits") == bits) \
                and (model is None or r.get("model") == model):
            return r
    return None
