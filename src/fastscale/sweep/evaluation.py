"""After a run: its trained GPT back from the newest complete checkpoint, and per-token losses of whole
documents, for the studies that measure more than the trainer's eval loss (fastscale.sweep.studies).

Every document is scored on its own, from its first token, as one row: no packing, so no token loses
its context to a row boundary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from fastscale.model import GPT, GPTConfig
from fastscale.train import checkpoint as ckpt
from fastscale.train.config import DeepSpeedSettings

from .index import read_state


def newest_checkpoint(run_dir) -> Path:
    """The newest intact checkpoint of a run (its files match the SHA-256 of its marker; damaged newer
    ones are named in a warning)."""
    run_dir = Path(run_dir)
    found = ckpt.newest_intact(run_dir / "checkpoints")
    if found is None:
        raise FileNotFoundError(f"run_dir={str(run_dir)!r}: no complete checkpoint under checkpoints/ (checkpoint_interval=0?)")
    return run_dir / "checkpoints" / found[1]


def trained_state(run_dir) -> dict:
    """The model's weights (fp32, CPU) from the newest intact checkpoint of any ZeRO stage, loaded as data
    only (fastscale.train.checkpoint.safe_load)."""
    tag_dir = newest_checkpoint(run_dir)
    info = read_state(Path(run_dir) / "config.json")
    if DeepSpeedSettings.read(info["deepspeed"], info["world_size"]).choice.stage == 3:  # partitioned: DeepSpeed's own consolidation
        return ckpt.zero3_fp32_state(tag_dir)
    state = ckpt.safe_load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu")["module"]
    return {name: tensor.float() for name, tensor in state.items()}


def load_trained(run_dir) -> GPT:
    """The run's GPT (fastscale.model, from its config.json) with its trained weights, in eval mode on CPU."""
    state = trained_state(run_dir)
    model = GPT(GPTConfig.from_dict(read_state(Path(run_dir) / "config.json")["model"]))
    model.load_state_dict(state)
    return model.eval()


def token_losses(model: GPT, documents, *, batch_size: int = 64) -> list[np.ndarray]:
    """token_scores' losses."""
    return token_scores(model, documents, batch_size=batch_size)[0]


@torch.no_grad()
def token_scores(model: GPT, documents, *, batch_size: int = 64) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """For each document d (1-D token array), from one forward pass: losses, float64 [len(d) - 1], element
    t is -log p(d[t + 1] | d[:t + 1]) in nats; and hits, bool [len(d) - 1], whether d[t + 1] is the
    model's most likely next token there (greedy decoding's choice). Documents longer than the model's
    seq_len are refused, not cut."""
    documents = [np.asarray(d, dtype=np.int64) for d in documents]
    for i, d in enumerate(documents):
        if d.ndim != 1 or not 2 <= len(d) <= model.config.seq_len:
            raise ValueError(f"documents[{i}]: shape {d.shape}; expected 1-D with 2 to seq_len={model.config.seq_len} tokens")
    order = np.argsort([len(d) for d in documents], kind="stable")  # similar lengths together: little padding
    losses: list[np.ndarray | None] = [None] * len(documents)
    hits: list[np.ndarray | None] = [None] * len(documents)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(documents[i]) for i in chunk)
        idx = torch.zeros(len(chunk), width, dtype=torch.long)
        for row, i in enumerate(chunk):
            idx[row, : len(documents[i])] = torch.from_numpy(documents[i])
        # causal attention: padding after a document never reaches its tokens
        logits = model(idx[:, :-1]).double()
        nll = F.cross_entropy(logits.transpose(1, 2), idx[:, 1:], reduction="none")
        best = logits.argmax(-1) == idx[:, 1:]
        for row, i in enumerate(chunk):
            losses[i] = nll[row, : len(documents[i]) - 1].numpy()
            hits[i] = best[row, : len(documents[i]) - 1].numpy()
    return losses, hits
