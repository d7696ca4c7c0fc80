"""Mistral in GGUF: llama.cpp reads it as ``llama`` (its converter permutes q/k alike)."""

from llmbuild.backends.families.base import Gguf

GGUF = Gguf(arch="LLAMA", permute_qk=True)
