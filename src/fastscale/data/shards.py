"""Token shards: a flat memory-mapped token file with a document index.

A shard is a directory holding
  tokens.bin   every document's tokens back to back (uint16 when the vocabulary fits, else uint32),
  index.npy    int64 offsets [n_docs + 1]: document i is tokens[index[i]:index[i + 1]],
  meta.json    dtype, vocab_size, n_docs, n_tokens, tokenizer and free-form provenance.
It is written into a temporary sibling directory and renamed into place, so a reader never sees a
half-written shard.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

from fastscale.io import atomic_directory, read_json, write_json


def dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def write_shard(path: str | os.PathLike, documents: Iterable[np.ndarray], vocab_size: int, **meta) -> "TokenShard":
    """Write documents (1-D integer arrays with values in [0, vocab_size)) as a shard at path."""
    dtype = dtype_for(vocab_size)
    with atomic_directory(path) as tmp:
        offsets = [0]
        with open(tmp / "tokens.bin", "wb") as f:
            for i, doc in enumerate(documents):
                doc = np.asarray(doc)
                if doc.ndim != 1 or len(doc) == 0:
                    raise ValueError(f"write_shard: document {i} has shape {doc.shape}; expected a non-empty 1-D array")
                if doc.min() < 0 or doc.max() >= vocab_size:
                    raise ValueError(f"write_shard: document {i} has tokens outside [0, {vocab_size}): min {doc.min()}, max {doc.max()}")
                f.write(doc.astype(dtype).tobytes())
                offsets.append(offsets[-1] + len(doc))
            f.flush()
            os.fsync(f.fileno())
        np.save(tmp / "index.npy", np.asarray(offsets, dtype=np.int64))
        info = {"dtype": dtype.name, "vocab_size": int(vocab_size), "n_docs": len(offsets) - 1, "n_tokens": offsets[-1], **meta}
        write_json(tmp / "meta.json", info, indent=2)
    return TokenShard(path)


class TokenShard:
    """Read side of a shard: tokens as a read-only memmap, offsets and metadata in memory."""

    def __init__(self, path: str | os.PathLike) -> None:
        path = Path(path)
        missing = [name for name in ("tokens.bin", "index.npy", "meta.json") if not (path / name).is_file()]
        if missing:
            raise FileNotFoundError(f"token shard {str(path)!r} is missing {missing}; write one with `fastscale data`")
        self.path = path
        self.meta = read_json(path / "meta.json", what=f"the metadata of token shard {path}",
                              recover=f"write the shard again with `fastscale data DOMAIN --out {path.parent}`")
        self.offsets = np.load(path / "index.npy")
        n = int(self.offsets[-1])
        self.tokens = np.memmap(path / "tokens.bin", dtype=self.meta["dtype"], mode="r", shape=(n,)) if n else np.zeros(0, self.meta["dtype"])
        if len(self.offsets) != self.meta["n_docs"] + 1 or n != self.meta["n_tokens"]:
            raise ValueError(f"token shard {str(path)!r} is inconsistent: index and meta.json disagree")

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"document {i} out of range for a shard of {len(self)} documents")
        i %= len(self)
        return np.asarray(self.tokens[self.offsets[i] : self.offsets[i + 1]], dtype=np.int64)


class MemoryShard(TokenShard):
    """A shard held in memory (same interface), for bundled data built on the fly."""

    def __init__(self, documents: Iterable[np.ndarray], vocab_size: int, **meta) -> None:
        docs = [np.asarray(d, dtype=np.int64) for d in documents]
        self.path = None
        self.offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
        self.tokens = np.concatenate(docs) if docs else np.zeros(0, np.int64)
        self.meta = {"dtype": "int64", "vocab_size": int(vocab_size), "n_docs": len(docs), "n_tokens": int(self.offsets[-1]), **meta}
