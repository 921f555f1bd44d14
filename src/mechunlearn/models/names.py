"""Names that need no torch: the matrix kinds a component names and the model types we support
(``components.py`` builds on them; the budget rules and the cheap model checks read them)."""

ATTN_MATRICES = ("q", "k", "v", "o")
MLP_MATRICES = ("in", "gate", "out")

LLAMA_LIKE = ("llama", "gemma", "gemma2", "gemma3", "gemma3_text", "qwen2", "qwen3", "mistral", "olmo2", "phi3")
SUPPORTED_MODEL_TYPES = (*LLAMA_LIKE, "gpt2", "gpt_neox")
