"""GPT-2 in GGUF: llama.cpp's ``gpt2``, linears untransposed, the tied output written out."""

from llmbuild.backends.families.base import Gguf

GGUF = Gguf(
    arch="GPT2",
    conv1d=(".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight"),
    tied_output=True,
)
