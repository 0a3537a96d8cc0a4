"""Model adapters: families as data (``layout``, ``families``; torch-free), the adapter over a loaded model
(``base``) and loading from directories, GGUF files, hub ids or the zoo (``loading``)."""
