"""Evaluation: perplexity, and (in llmc_slm) the bridge to lm-evaluation-harness."""
