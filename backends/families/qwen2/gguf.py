"""Qwen2 in GGUF: llama.cpp's ``qwen2`` (NeoX rope: q/k rows as transformers has them)."""

from llmbuild.backends.families.base import Gguf

GGUF = Gguf(arch="QWEN2")
