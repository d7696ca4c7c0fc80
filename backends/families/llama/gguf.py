"""Llama in GGUF: llama.cpp's ``llama`` architecture, q/k rows interleaved for its rope."""

from llmbuild.backends.families.base import Gguf

GGUF = Gguf(arch="LLAMA", permute_qk=True)
