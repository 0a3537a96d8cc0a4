"""Quantization algorithms, one module per method (how each runs); what each method is (its settings,
checks, label) is in ``llmc.methods``, which registers every algorithm lazily by module path."""
