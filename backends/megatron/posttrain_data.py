"""Post-training data from the tokenize nodes' indexed datasets: chats (tokens and the
mask of the assistant's tokens) packed with document masks or padded, preference pairs,
GRPO prompts with their answers, and labeled texts. Batches have fixed shapes ``[b, seq_len]``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _datasets(sources: dict[str, str], split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The path prefix and index entry of every non-empty dataset of the split, in a
    stable order."""
    for _, path in sorted(sources.items()):
        index = json.loads((Path(path) / "datasets.json").read_text())
        for d in index["datasets"]:
            if d["split"] == split and d["documents"]:
                yield str(Path(path) / d["prefix"]), d


def _records(prefix: str, name: str) -> list[dict[str, Any]]:
    """The jsonl records a dataset keeps beside its tokens (answers, labels)."""
    with open(f"{prefix}.{name}.jsonl") as f:
        return [json.loads(line) for line in f]


def _documents(sources: dict[str, str], split: str, forms: tuple[str, ...]) -> list[tuple]:
    """Every document of the split, as one array per form, in a stable order."""
    from llmbuild.backends.megatron.cpu import indexed_dataset

    IndexedDataset = indexed_dataset()

    docs: list[tuple] = []
    for prefix, _ in _datasets(sources, split):
        parts = [IndexedDataset(prefix + form, mmap=False) for form in forms]
        extra = _records(prefix, "answers") if forms == (".prompt",) else []
        for i in range(len(parts[0])):
            row = tuple(np.asarray(p[i], dtype=np.int64) for p in parts)
            docs.append(row + ((extra[i],) if extra else ()))
    return docs


def _order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


class _Epochs:
    """Sample ``i`` of an endless sequence of seeded shuffles of ``n`` items."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed
        self._orders: dict[int, np.ndarray] = {}

    def __getitem__(self, i: int) -> int:
        epoch, k = divmod(i, self.n)
        if epoch not in self._orders:
            self._orders = {epoch: _order(self.n, self.seed, epoch)}
        return int(self._orders[epoch][k])


def _causal_blocks(doc_ids: torch.Tensor) -> torch.Tensor:
    """``[b, 1, s, s]`` True where attention is hidden: later positions and other docs."""
    s = doc_ids.shape[1]
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    same = doc_ids.unsqueeze(2) == doc_ids.unsqueeze(1)
    return ~(causal & same).unsqueeze(1)


class ChatSamples:
    """Sequences of ``seq_len + 1`` tokens for supervised fine-tuning. Packing fills each
    sequence with whole conversations (truncated when longer), each attending only to
    itself with positions restarting at 0; padding puts one conversation per sequence.
    ``cut_off`` counts the conversations whose answers all lie past ``seq_len`` tokens: they
    teach nothing; ``cut_short`` those whose answers are cut at ``seq_len`` after their
    start: they are learned without their end."""

    def __init__(
        self, sources: dict[str, str], split: str, seq_len: int, seed: int, pad: int, packing: bool
    ) -> None:
        whole = _documents(sources, split, ("", ".mask"))
        self.docs = [(ids[: seq_len + 1], m[: seq_len + 1]) for ids, m in whole]
        self.cut_off = sum(1 for _ids, m in self.docs if not m[1:].any())
        self.cut_short = sum(
            1
            for (_ids, m), (_, full) in zip(self.docs, whole)
            if m[1:].any() and full[len(m) :].any()
        )
        self.seq_len, self.pad, self.packing = seq_len, pad, packing
        self.order = _Epochs(len(self.docs), seed) if self.docs else None
        self._packs: list[list[int]] = []
        self._next = 0  # the next position in the document order

    def __len__(self) -> int:
        return len(self.docs)

    def _pack(self, i: int) -> list[int]:
        if not self.packing:
            return [self.order[i]]
        while len(self._packs) <= i:
            pack, used = [], 0
            while True:
                doc = self.order[self._next]
                size = len(self.docs[doc][0])
                if pack and used + size > self.seq_len + 1:
                    break
                pack.append(doc)
                used += size
                self._next += 1
            self._packs.append(pack)
        return self._packs[i]

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        n = self.seq_len + 1
        tokens = np.full((len(indices), n), self.pad, dtype=np.int64)
        learn = np.zeros((len(indices), n), dtype=np.int64)
        doc = np.full((len(indices), n), -1, dtype=np.int64)
        pos = np.zeros((len(indices), n), dtype=np.int64)
        for row, i in enumerate(indices):
            at = 0
            for k, d in enumerate(self._pack(i)):
                ids, mask = self.docs[d]
                size = min(len(ids), n - at)
                tokens[row, at : at + size] = ids[:size]
                learn[row, at : at + size] = mask[:size]
                doc[row, at : at + size] = k
                pos[row, at : at + size] = np.arange(size)
                at += size
            if not self.packing:
                pos[row, at:] = np.arange(at, n)
        t = torch.from_numpy(tokens)
        out = {
            "tokens": t[:, :-1].contiguous(),
            "labels": t[:, 1:].contiguous(),
            "loss_mask": torch.from_numpy(learn[:, 1:]).float(),
            "position_ids": torch.from_numpy(pos[:, :-1]).contiguous(),
        }
        if self.packing:
            out["attention_mask"] = _causal_blocks(torch.from_numpy(doc[:, :-1]))
        return out


class PairSamples:
    """Preference pairs: each batch holds the chosen answers, then the rejected ones, after
    their prompt (see ``answer_batch``). ``cut_off`` counts the pairs whose prompt fills
    the whole sequence, leaving no answer token to compare (for a reward model, which
    reads each input's last token, no answer token in its input)."""

    def __init__(
        self, sources: dict[str, str], split: str, seq_len: int, pad: int, scored: bool = False
    ) -> None:
        self.pairs = _documents(sources, split, (".prompt", ".chosen", ".rejected"))
        self.seq_len, self.pad = seq_len, pad
        room = seq_len if scored else seq_len + 1
        self.cut_off = sum(1 for p, *_answers in self.pairs if len(p) >= room)

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        rows = [(self.pairs[i][0], self.pairs[i][1 + side]) for side in (0, 1) for i in indices]
        return answer_batch(rows, self.seq_len, self.pad)


def answer_batch(rows: list[tuple[Any, Any]], seq_len: int, pad: int) -> dict[str, torch.Tensor]:
    """Sequences of a prompt followed by an answer, cut to ``seq_len + 1`` tokens and
    padded: the loss mask marks the answer's tokens, ``last`` each sequence's final real
    input position (where a reward model reads its score)."""
    n = seq_len + 1
    tokens = np.full((len(rows), n), pad, dtype=np.int64)
    learn = np.zeros((len(rows), n), dtype=np.int64)
    last = np.zeros(len(rows), dtype=np.int64)
    for r, (prompt, answer) in enumerate(rows):
        seq = np.concatenate([np.asarray(prompt, np.int64), np.asarray(answer, np.int64)])[:n]
        tokens[r, : len(seq)] = seq
        learn[r, len(prompt) : len(seq)] = 1
        last[r] = min(len(seq), n - 1) - 1
    t = torch.from_numpy(tokens)
    return {
        "tokens": t[:, :-1].contiguous(),
        "labels": t[:, 1:].contiguous(),
        "loss_mask": torch.from_numpy(learn[:, 1:]).float(),
        "position_ids": torch.arange(seq_len).expand(len(rows), -1),
        "last": torch.from_numpy(last),
    }


class PromptSamples:
    """GRPO prompts (token ids) with their source records (the ``answer`` field)."""

    def __init__(self, sources: dict[str, str], split: str, room: int | None = None) -> None:
        self.prompts = _documents(sources, split, (".prompt",))
        self.long = 0 if room is None else sum(1 for ids, _ in self.prompts if len(ids) > room)
        """Prompts longer than ``room`` (seq_len less the completion's tokens): their
        completions run past seq_len, where they are sampled but not trained on."""

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> tuple[list[int], dict[str, Any]]:
        ids, record = self.prompts[i % len(self.prompts)]
        return ids.tolist(), record


def fit_text(
    text: Any, pair: Any, seq_len: int, sep: int, start: int | None = None
) -> tuple[np.ndarray, bool, np.ndarray | None]:
    """A labeled text's tokens (then ``sep`` and its pair's, for pairs) cut to ``seq_len``,
    the longer of the two giving way first; whether anything was cut; and, for an encoder
    (``start``: its ``[CLS]``), BERT's form ``[CLS] text [SEP] pair [SEP]`` with its token
    types (0 up to the first ``[SEP]``, 1 after)."""
    text = np.asarray(text, dtype=np.int64)
    pair = None if pair is None else np.asarray(pair, dtype=np.int64)
    extra = (pair is not None) + (start is not None) * 2
    room = seq_len - extra
    cut = len(text) + (0 if pair is None else len(pair)) > room
    if pair is not None and cut:
        pair = pair[: min(len(pair), max(room // 2, room - len(text)))]
    text = text[: room - (0 if pair is None else len(pair))]
    if start is None:
        if pair is None:
            return text, cut, None
        return np.concatenate([text, [sep], pair]), cut, None
    first = np.concatenate([[start], text, [sep]])
    second = np.zeros(0, dtype=np.int64) if pair is None else np.concatenate([pair, [sep]])
    types = np.concatenate([np.zeros(len(first), np.int64), np.ones(len(second), np.int64)])
    return np.concatenate([first, second]).astype(np.int64), cut, types


def labeled_batch(
    docs: list[tuple[Any, ...]],
    seq_len: int,
    pad: int,
    encoder: bool = False,
    classes: int | None = None,
) -> dict[str, torch.Tensor]:
    """Texts padded to ``seq_len``, ``last`` marking each one's final token (where a
    decoder's classifier reads), and their label ids (with ``classes``, multi-label: each
    doc's ids as a row of 0/1 over the classes). An encoder's batch adds the padding mask
    (True = padding) and the token types (a doc's third item, zeros when absent)."""
    tokens = np.full((len(docs), seq_len), pad, dtype=np.int64)
    types = np.zeros((len(docs), seq_len), dtype=np.int64)
    last = np.zeros(len(docs), dtype=np.int64)
    for r, (ids, _, *rest) in enumerate(docs):
        tokens[r, : len(ids)] = ids
        if rest and rest[0] is not None:
            types[r, : len(ids)] = rest[0]
        last[r] = max(len(ids), 1) - 1
    out = {
        "tokens": torch.from_numpy(tokens),
        "position_ids": torch.arange(seq_len).expand(len(docs), -1),
        "last": torch.from_numpy(last),
        "label": torch.tensor([doc[1] for doc in docs], dtype=torch.int64)
        if classes is None
        else multi_hot([doc[1] for doc in docs], classes),
    }
    if encoder:
        lengths = torch.from_numpy(last + 1)
        out["attention_mask"] = (torch.arange(seq_len) >= lengths[:, None])[:, None, None, :]
        out["tokentype_ids"] = torch.from_numpy(types)
    return out


def multi_hot(label_ids: list[Any], classes: int) -> torch.Tensor:
    """Rows of 0/1 over ``classes``: 1 at each text's label ids."""
    out = torch.zeros(len(label_ids), classes)
    for r, ids in enumerate(label_ids):
        out[r, list(ids)] = 1.0
    return out


class LabeledTexts:
    """Labeled texts already cut to fit (``fit_text``), ``truncated`` of them cut, read
    in order in ``labeled_batch``'s batches (an ``encoder``'s with its padding mask;
    with ``classes``, multi-label: a doc's label is a tuple of ids)."""

    def __init__(
        self,
        docs: list[tuple[Any, ...]],
        seq_len: int,
        pad: int,
        truncated: int = 0,
        encoder: bool = False,
        classes: int | None = None,
    ) -> None:
        self.docs, self.seq_len, self.pad, self.truncated = docs, seq_len, pad, truncated
        self.encoder, self.classes = encoder, classes

    def __len__(self) -> int:
        return len(self.docs)

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        docs = [self.docs[i] for i in indices]
        return labeled_batch(docs, self.seq_len, self.pad, self.encoder, self.classes)


def label_ids(label: Any, ids: dict[str, int], multi_label: bool) -> Any:
    """A text's label id, or for a multi-label classifier the tuple of its label ids (a
    single label is a list of one). A ValueError says what does not fit the classifier."""
    names = label if isinstance(label, list) else [label]
    if isinstance(label, list) and not multi_label:
        raise ValueError("a list of labels, but the classifier gives one")
    unknown = [name for name in names if name not in ids]
    if unknown:
        raise ValueError(
            f"label {unknown[0]!r} is not one the classifier knows ({', '.join(map(str, ids))})"
        )
    if not multi_label:
        return ids[label]
    return tuple(ids[name] for name in names)


class LabeledSamples(LabeledTexts):
    """Labeled texts of a split (``fit_text``: a pair follows its text after an
    end-of-sequence token), one per sequence, cut to ``seq_len`` tokens (counted in
    ``truncated``). The training split is reshuffled every epoch; the others are read in
    order."""

    def __init__(
        self,
        sources: dict[str, str],
        split: str,
        seq_len: int,
        pad: int,
        sep: int,
        labels: tuple[str, ...],
        seed: int,
        start: int | None = None,
        multi_label: bool = False,
    ) -> None:
        from llmbuild.backends.megatron.cpu import indexed_dataset

        IndexedDataset = indexed_dataset()

        ids = {name: i for i, name in enumerate(labels)}
        docs: list[tuple[Any, int]] = []
        truncated = 0
        for prefix, d in _datasets(sources, split):
            texts = IndexedDataset(prefix, mmap=False)
            pairs = IndexedDataset(prefix + ".pair", mmap=False) if d.get("pairs") else None
            for i, record in enumerate(_records(prefix, "labels")):
                try:
                    label = label_ids(record["label"], ids, multi_label)
                except ValueError as e:
                    raise ValueError(f"{split} record {len(docs) + 1}: {e}") from None
                pair = None if pairs is None else pairs[i]
                tokens, cut, types = fit_text(texts[i], pair, seq_len, sep, start)
                truncated += cut
                docs.append((tokens, label, types))
        classes = len(labels) if multi_label else None
        super().__init__(docs, seq_len, pad, truncated, start is not None, classes)
        self.order = _Epochs(len(docs), seed) if split == "train" and docs else None

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return super().batch([self.order[i] if self.order else i % len(self) for i in indices])
