"""Sequence packing: documents back to back in fixed-length rows, boundaries carried along.

The shard's token stream is cut into rows of seq_len tokens: row r is stream[r*T : (r+1)*T]. A document
that does not fit in the rest of a row continues at the start of the next one. Inside a row each
document piece is a segment: its boundaries go to attention(cu_seqlens=...) so no token attends across
documents, positions restart at 0 in each segment, and the target of a token is the next token of the
same document (ignore_index where the document ends, so no loss is taken across a boundary; the last
token of a row still predicts the first token of the next row when they are the same document).
Random access by row index, so a data order is a permutation of row indices: cheap to reproduce
exactly from (seed, epoch) at any step.
"""

from __future__ import annotations

import functools

import numpy as np

IGNORE_INDEX = -100


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
