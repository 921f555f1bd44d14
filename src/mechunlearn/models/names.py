"""Names that need no torch: the dtype names, the matrix kinds a component names and the model types we support
(``components.py`` builds on them; the budget rules and the cheap model checks read them)."""

# every dtype name a user may write (config, --dtype), to its torch name; "auto": bf16 on CUDA, else fp32
DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16", "auto": "auto"}

ATTN_MATRICES = ("q", "k", "v", "o")
MLP_MATRICES = ("in", "gate", "out")

LLAMA_LIKE = ("llama", "gemma", "gemma2", "gemma3", "gemma3_text", "qwen2", "qwen3", "mistral", "olmo2", "phi3")
SUPPORTED_MODEL_TYPES = (*LLAMA_LIKE, "gpt2", "gpt_neox")
