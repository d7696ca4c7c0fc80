"""Qwen3 in GGUF: llama.cpp's ``qwen3`` (NeoX rope, q/k norms as their own tensors)."""

from llmbuild.backends.families.base import Gguf

GGUF = Gguf(arch="QWEN3")
