"""A Hugging Face checkpoint on disk: where it is (a local directory, or a Hub model
resolved to its commit in the Hugging Face cache), its ``config.json``, family and weight
files, each checked without reading the weights: a pickle refused unless allowed, an
index naming a missing shard, a truncated safetensors file. Torch-free: ``validate`` and
``plan`` open checkpoints with it."""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmbuild.backends.families import Unsupported, family_of_config

from llmbuild.errors import UserError

HUB = re.compile(r"^hf://(?P<repo>[\w.\-]+/[\w.\-]+)(?:@(?P<revision>[\w.\-/]+))?$")
FILES = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken")
"""What a Hub download fetches: configs, safetensors weights, tokenizer files."""
TOKENIZER_FILES = ("tokenizer.json", "*.model", "vocab.json", "vocab.txt", "*.tiktoken")
"""A tokenizer's vocabulary: fast, sentencepiece, GPT-2 BPE, WordPiece or tiktoken."""


class CheckpointError(UserError):
    """A checkpoint that cannot be used as it is; the message says why and what to do."""


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    config: dict[str, Any]
    family: Any
    weights: tuple[Path, ...]
    """Weight files in order (safetensors, or .bin when pickles are allowed)."""
    hub: str | None = None
    """``org/name@commit`` for a Hub checkpoint."""

    @property
    def pickled(self) -> bool:
        return bool(self.weights) and self.weights[0].suffix == ".bin"

    def architecture(self) -> dict[str, Any]:
        return self.family.architecture(self.config, f"{self.path}/config.json")

    def has_tokenizer(self) -> bool:
        """Whether it holds a tokenizer's vocabulary in any form transformers reads."""
        return any(any(self.path.glob(pattern)) for pattern in TOKENIZER_FILES)

    def tokenizer_vocab(self) -> int | None:
        """The number of token ids of its tokenizer (``tokenizer_vocab``)."""
        return tokenizer_vocab(self.path)


def tokenizer_vocab(directory: Path) -> int | None:
    """The number of token ids of the tokenizer in ``directory``: ``tokenizer.json``'s,
    else a sentencepiece ``tokenizer.model``'s pieces and the ids ``tokenizer_config.json``
    adds; None when it has neither (or a model sentencepiece cannot read). A
    ``tokenizer.json`` that is not one is a CheckpointError."""
    fast = directory / "tokenizer.json"
    if fast.is_file():
        try:
            tok = json.loads(fast.read_text(encoding="utf-8"))
            vocab = tok.get("model", {}).get("vocab") or {}
            ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))
            ids += [t["id"] for t in tok.get("added_tokens", [])]
            return max(ids, default=-1) + 1 + len(_lacked(tok, directory))
        except (ValueError, AttributeError, KeyError, TypeError) as e:
            why = f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)
            raise CheckpointError(f"{fast}: not a readable tokenizer ({why})") from None
    model = directory / "tokenizer.model"
    if not model.is_file():
        return None
    import sentencepiece

    try:
        pieces = sentencepiece.SentencePieceProcessor(model_file=str(model)).get_piece_size()
    except (OSError, RuntimeError):  # not a sentencepiece model (tiktoken's use the name)
        return None
    config = directory / "tokenizer_config.json"
    added = (
        json.loads(config.read_text()).get("added_tokens_decoder", {}) if config.is_file() else {}
    )
    return max([pieces - 1, *(int(i) for i in added)]) + 1


SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token",
                "mask_token")  # fmt: skip


def named_specials(directory: Path) -> list[str]:
    """The special tokens ``tokenizer_config.json`` names (each a string or an
    ``AddedToken`` table); transformers adds those the vocabulary lacks, as new ids."""
    config = directory / "tokenizer_config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}
    except ValueError:
        return []
    named = [data.get(k) for k in SPECIAL_KEYS]
    named += list(data.get("additional_special_tokens") or [])
    out = []
    for t in named:
        text = t.get("content") if isinstance(t, dict) else t
        if isinstance(text, str) and text and text not in out:
            out.append(text)
    return out


def _lacked(tok: dict[str, Any], directory: Path) -> list[str]:
    """The special tokens the config names that ``tok`` (``tokenizer.json``) lacks."""
    vocab = tok.get("model", {}).get("vocab") or {}
    known = set(vocab if isinstance(vocab, dict) else ())
    known |= {t.get("content") for t in tok.get("added_tokens", [])}
    return [t for t in named_specials(directory) if t not in known] if known else []


def lacked_specials(directory: Path) -> list[str]:
    """The special tokens ``tokenizer_config.json`` names that ``tokenizer.json``'s
    vocabulary lacks: transformers adds each as a new id beyond it."""
    try:
        return _lacked(json.loads((directory / "tokenizer.json").read_text("utf-8")), directory)
    except (OSError, ValueError, AttributeError):
        return []


def resolve_hub(repo: str, revision: str | None) -> tuple[Path, str]:
    """A Hub model's local snapshot (downloaded when missing and the machine is online)
    and ``repo@commit``."""
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        path = Path(
            snapshot_download(
                repo, revision=revision, allow_patterns=list(FILES), local_files_only=offline
            )
        )
    except Exception as e:  # huggingface_hub raises many kinds (offline, 404, network)
        rev = revision or "main"
        how = (
            "the machine is offline (HF_HUB_OFFLINE is set) and it is not in the Hugging Face cache"
            if offline
            else f"it could not be downloaded ({type(e).__name__}: {str(e).splitlines()[0]})"
        )
        raise CheckpointError(
            f"cannot get the Hub model {repo!r} at revision {rev!r}: {how}; download it "
            f"where the Hub is reachable (huggingface-cli download {repo} --revision {rev}) "
            "and point checkpoint at that local directory"
        ) from None
    return path, f"{repo}@{path.name}"


def _safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file's framing (its header is read, not its data)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size:
                return f"its header claims {n} bytes but the file has {size}"
            header = json.loads(f.read(n))
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        return f"it is not a safetensors file ({e})"
    if not isinstance(header, dict):
        return "it is not a safetensors file (its header is not a JSON object)"
    ends = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        problem = _entry_problem(entry)
        if problem is not None:
            return f"its header's entry for {name!r} {problem}"
        ends.append(entry["data_offsets"][1])
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        return f"it is truncated: {size} bytes where its header needs {expected}"
    return None


DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
               "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
               "F8_E8M0": 1}  # fmt: skip
"""The element types of safetensors' format, with their sizes."""


def _entry_problem(entry: Any) -> str | None:
    """What is wrong with one tensor's entry of a safetensors header, which the library
    would report only as it loads (``missing field 'dtype'``)."""
    if not isinstance(entry, dict):
        return "is not a table"
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        return f"has dtype {dtype!r}, which is none of safetensors' types"
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        return f"has shape {shape!r}, not a list of sizes"
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) for o in offsets)
        and 0 <= offsets[0] <= offsets[1]
    ):
        return f"has data_offsets {offsets!r}, not [begin, end]"
    count = 1
    for d in shape:
        count *= d
    if offsets[1] - offsets[0] != count * DTYPE_BYTES[dtype]:
        return (
            f"spans {offsets[1] - offsets[0]} bytes where a {dtype} tensor of shape {shape} "
            f"takes {count * DTYPE_BYTES[dtype]}"
        )
    return None


def _weight_files(path: Path, allow_pickle: bool) -> tuple[Path, ...]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as e:
            raise CheckpointError(f"{index}: not a safetensors index ({e})") from None
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise CheckpointError(f"{index} names shards that are not there: {', '.join(missing)}")
        files = tuple(path / n for n in names)
    elif (path / "model.safetensors").is_file():
        files = (path / "model.safetensors",)
    else:
        pickles = sorted(path.glob("*.bin"))
        if not pickles:
            raise CheckpointError(f"{path}: no weights (model.safetensors or an index of shards)")
        if not allow_pickle:
            raise CheckpointError(
                f"{path}: its weights are pickle files ({pickles[0].name}), which can run code "
                "when loaded; convert them to safetensors, or set allow_pickle = true on the "
                "import stage to read them with torch.load(weights_only=True)"
            )
        return tuple(p for p in pickles if not p.name.startswith("training_args"))
    for f in files:
        problem = _safetensors_problem(f)
        if problem is not None:
            raise CheckpointError(f"{f}: {problem}")
    return files


def open_checkpoint(ref: str, allow_pickle: bool = False) -> Checkpoint:
    """The checkpoint ``ref`` names (a directory, or ``hf://org/name[@revision]``)."""
    hub = None
    match = HUB.match(ref)
    if match:
        path, hub = resolve_hub(match["repo"], match["revision"])
    elif "://" in ref:
        raise CheckpointError(f"{ref}: a checkpoint is a local directory or hf://<org>/<name>")
    else:
        path = Path(ref)
    if path.is_file():
        raise CheckpointError(
            f"{path}: a file; a checkpoint is the directory that holds config.json and the "
            f"weights ({path.parent})"
        )
    if not path.is_dir():
        # org/name, a Hub model's name, read as a path relative to the spec
        repo = "/".join(path.parts[-2:])
        hub_like = not path.parent.exists() and re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", repo)
        hint = f" (a Hugging Face Hub model is named hf://{repo})" if hub_like else ""
        raise CheckpointError(f"{path}: no such checkpoint directory{hint}")
    config_path = path / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{config_path}: missing (a Hugging Face model has one)") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{config_path}: cannot be read ({e})") from None
    try:
        family = family_of_config(config, str(config_path))
    except Unsupported as e:
        raise CheckpointError(str(e)) from None
    return Checkpoint(path, config, family, _weight_files(path, allow_pickle), hub)
