"""Model builders: the tiny text LM (and, later, the tiny vision-language model)."""

from dp_gym.models.tiny_lm import TinyLMConfig, build_tiny_lm, cache_dir, ensure_tiny_lm

__all__ = ["TinyLMConfig", "build_tiny_lm", "cache_dir", "ensure_tiny_lm"]
