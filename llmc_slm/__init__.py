"""SLMQuant: the small-language-model quantization benchmark built on the llmc engine."""
