"""SLMQuant's deployment tracks: Track 2 (inference performance, ``inference``) and Track 3 (quantization
consumption, ``quant_cost``). See shared/guide/protocol.md for the definitions."""
