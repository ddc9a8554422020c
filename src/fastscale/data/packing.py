"""Sequence packing: documents back to back in fixed-length rows, boundaries carried along.

Two packings (a run config's "packing" key):
- "stream" (the default): the shard's token stream is cut into rows of seq_len tokens: row r is
  stream[r*T : (r+1)*T]. A document that does not fit in the rest of a row continues at the start of
  the next one (its second piece starts at position 0, without the first piece in context). The last
  token of a row still predicts the first token of the next row when they are the same document; the
  stream's tail shorter than a row is not used.
- "documents": whole documents only. Documents are placed greedily in shard order into rows of
  seq_len; when the next one does not fit in the rest of a row, the row is padded and the document
  starts the next row. Padding is a segment of its own (token 0, positions from 0, targets ignore_index),
  so no real token attends to it and no loss is taken on it. Every document appears exactly once, whole,
  in one row; a document longer than seq_len is refused (splitting it is what "stream" does). Use it
  when what comes first in a document must be in context of what follows, e.g. a caption and its image.
  Padding is computed like any token, so the trainer's token and FLOP counts include it.

Inside a row each document (or document piece) is a segment: its boundaries go to
attention(cu_seqlens=...) so no token attends across documents, positions restart at 0 in each
segment, and the target of a token is the next token of the same document (ignore_index where the
document ends, so no loss is taken across a boundary). Both are random access by row index, so a data
order is a permutation of row indices: cheap to reproduce exactly from (seed, epoch) at any step.
"""

from __future__ import annotations

import functools

import numpy as np

IGNORE_INDEX = -100
PACKINGS = ("stream", "documents")


class PackedRows:
    def __init__(self, shard, seq_len: int) -> None:
        if seq_len < 1:
            raise ValueError(f"PackedRows: seq_len={seq_len}; expected a positive integer")
        self.shard, self.seq_len = shard, seq_len
        self.n_rows = shard.n_tokens // seq_len
        if self.n_rows == 0:
            raise ValueError(f"PackedRows: shard {shard.path} holds {shard.n_tokens} tokens, fewer than one row of seq_len={seq_len}")

    def __len__(self) -> int:
        return self.n_rows

    def __getitem__(self, r: int) -> dict:
        if not 0 <= r < self.n_rows:
            raise IndexError(f"row {r} out of range for {self.n_rows} rows")
        return self.row(r)

    def row(self, r: int) -> dict:
        """-> dict(idx [T], targets [T], seg_lens list of segment lengths summing to T, positions [T])."""
        T, offsets = self.seq_len, self.shard.offsets
        start = r * T
        stop = min(start + T + 1, self.shard.n_tokens)
        window = np.asarray(self.shard.tokens[start:stop], dtype=np.int64)
        pos = np.arange(start, start + T)
        doc = np.searchsorted(offsets, pos, side="right") - 1
        idx = window[:T]
        following = window[1:] if len(window) > T else np.append(window[1:], 0)  # the stream ends here
        has_next = pos + 1 < offsets[doc + 1]  # the next token belongs to the same document
        nxt = np.where(has_next, following, IGNORE_INDEX)
        first = np.concatenate([[True], doc[1:] != doc[:-1]])
        starts = np.flatnonzero(first)
        seg_lens = np.diff(np.append(starts, T))
        seg_start = np.repeat(starts, seg_lens)
        return {"idx": idx, "targets": nxt, "seg_lens": seg_lens.tolist(), "positions": pos - start - seg_start}


class WholeDocumentRows:
    """Rows of whole documents (packing "documents", see the module doc): row r holds documents
    first_doc[r] .. first_doc[r + 1] - 1, which are contiguous in the shard's stream."""

    def __init__(self, shard, seq_len: int) -> None:
        if seq_len < 1:
            raise ValueError(f"WholeDocumentRows: seq_len={seq_len}; expected a positive integer")
        if len(shard) == 0:
            raise ValueError(f"WholeDocumentRows: shard {shard.path} holds no documents")
        self.shard, self.seq_len = shard, seq_len
        self.lengths = np.diff(shard.offsets)
        if not self.lengths.all():
            raise ValueError(f"WholeDocumentRows: document {int(np.argmin(self.lengths))} of shard {shard.path} is empty; expected documents of 1 to seq_len={seq_len} tokens")
        too_long = np.flatnonzero(self.lengths > seq_len)
        if len(too_long):
            i = int(too_long[0])
            raise ValueError(
                f"WholeDocumentRows: document {i} of shard {shard.path} has {int(self.lengths[i])} tokens, more than "
                f"seq_len={seq_len} ({len(too_long)} documents are longer); raise seq_len to at least "
                f"{int(self.lengths.max())} or use packing='stream', which splits documents across rows"
            )
        self.first_doc = first_documents(self.lengths, seq_len)

    def __len__(self) -> int:
        return len(self.first_doc) - 1

    def __getitem__(self, r: int) -> dict:
        if not 0 <= r < len(self):
            raise IndexError(f"row {r} out of range for {len(self)} rows")
        return self.row(r)

    def row(self, r: int) -> dict:
        """-> dict(idx [T], targets [T], seg_lens list of segment lengths summing to T, positions [T])."""
        T, offsets = self.seq_len, self.shard.offsets
        a, b = self.first_doc[r], self.first_doc[r + 1]
        start, used = offsets[a], offsets[b] - offsets[a]
        idx = np.zeros(T, dtype=np.int64)
        idx[:used] = self.shard.tokens[start : offsets[b]]
        targets = np.full(T, IGNORE_INDEX, dtype=np.int64)
        targets[: used - 1] = idx[1:used]
        targets[offsets[a + 1 : b + 1] - start - 1] = IGNORE_INDEX  # each document's last token
        seg_lens = self.lengths[a:b].tolist() + ([int(T - used)] if used < T else [])
        seg_start = np.repeat(np.cumsum([0] + seg_lens[:-1]), seg_lens)
        return {"idx": idx, "targets": targets, "seg_lens": seg_lens, "positions": np.arange(T) - seg_start}


def first_documents(lengths: np.ndarray, seq_len: int) -> np.ndarray:
    """Greedy next-fit of documents (in order) into rows of seq_len: int64 [n_rows + 1], the first
    document of each row, then the number of documents."""
    firsts, fill = [0], 0
    for i, n in enumerate(lengths.tolist()):
        if fill + n > seq_len:
            firsts.append(i)
            fill = 0
        fill += n
    firsts.append(len(lengths))
    return np.asarray(firsts, dtype=np.int64)


def pack_rows(shard, seq_len: int, packing: str = "stream"):
    """The rows of a shard under a packing: PackedRows ("stream") or WholeDocumentRows ("documents")."""
    if packing not in PACKINGS:
        raise ValueError(f"packing={packing!r}; expected one of {PACKINGS}")
    return PackedRows(shard, seq_len) if packing == "stream" else WholeDocumentRows(shard, seq_len)


def has_rows(shard, seq_len: int, packing: str = "stream") -> bool:
    """Whether a shard fills at least one row (a held-out shard may be too small, or empty)."""
    return len(shard) > 0 and (packing == "documents" or shard.n_tokens >= seq_len)


def collate(rows: list[dict]) -> dict:
    """Stack rows into a batch for GPT.forward: idx, targets, positions [B, T]; cu_seqlens int32
    offsets of every segment in the flattened B*T tokens; max_seqlen."""
    import torch

    seg_lens = [n for row in rows for n in row["seg_lens"]]
    cu = np.concatenate([[0], np.cumsum(seg_lens)]).astype(np.int32)
    return {
        "idx": torch.from_numpy(np.stack([row["idx"] for row in rows])),
        "targets": torch.from_numpy(np.stack([row["targets"] for row in rows])),
        "positions": torch.from_numpy(np.stack([row["positions"] for row in rows])),
        "cu_seqlens": torch.from_numpy(cu),
        "max_seqlen": int(max(seg_lens)),
    }


@functools.lru_cache(maxsize=2)
def row_order(n_rows: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of row indices used in `epoch`: a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n_rows)


def rows_for(n_rows: int, seed: int, first: int, count: int) -> np.ndarray:
    """Row indices of global samples first .. first + count - 1 of the infinite stream of epochs."""
    out = np.empty(count, dtype=np.int64)
    for k in range(count):
        epoch, i = divmod(first + k, n_rows)
        out[k] = row_order(n_rows, seed, epoch)[i]
    return out
