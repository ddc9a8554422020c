"""Domain preparers: documents from a source, through the domain's tokenizer, into train/val shards.

`prepare(domain, out, ...)` writes out/train and out/val (each a token shard) and returns their
metadata; `load(spec)` gives the (train, val) shards a run config names, building bundled data in
memory when the spec names a dataset instead of a path.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from . import sources
from .shards import MemoryShard, TokenShard, write_shard
from .tokenizers import ByteTokenizer, ImageCaptionTokenizer, ImageTokenizer, VideoTokenizer

logger = logging.getLogger(__name__)

DOMAINS = ("digits", "photos", "images", "video", "captions", "math", "text")
ORDERS = ("caption_first", "image_first", "both")


def _check(name, value, ok: bool, expectation: str) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r}; expected {expectation}")


def build(
    domain: str,
    *,
    input: str | None = None,
    resolution: int = 8,
    frames: int = 4,
    order: str = "both",
    count: int | None = None,
    difficulty=(1, 3),
    eval_difficulty: int | None = None,
    doc_bytes: int | None = 4096,
    val_fraction: float = 0.1,
    seed: int = 0,
):
    """-> (tokenizer, train documents, val documents, provenance dict), documents as int64 arrays."""
    _check("domain", domain, domain in DOMAINS, f"one of {DOMAINS}")
    _check("resolution", resolution, isinstance(resolution, int) and resolution >= 1, "a positive integer")
    _check("frames", frames, isinstance(frames, int) and frames >= 1, "a positive integer")
    _check("order", order, order in ORDERS, f"one of {ORDERS}")
    _check("val_fraction", val_fraction, 0 <= val_fraction < 1, "a fraction in [0, 1)")
    if domain == "text" and input is None:
        raise ValueError("domain='text' needs input=PATH (a text file or a folder of them); no text corpus is bundled")
    rng = np.random.default_rng(seed)
    origin = "bundled" if input is None else str(input)
    val_docs = None
    if domain in ("digits", "photos", "images"):
        tok = ImageTokenizer(resolution)
        if input is not None:
            images = list(sources.image_folder(input, resolution))
        else:
            images = []
            if domain in ("digits", "images"):
                images += [image for image, _ in sources.digits(resolution)]
            if domain in ("photos", "images"):
                images += list(sources.photo_patches(resolution))
        docs = [tok.encode(image) for image in images]
    elif domain == "video":
        tok = VideoTokenizer(frames, resolution)
        clips = sources.video_folder(input, frames, resolution) if input else sources.photo_pans(count or 2000, frames, resolution, seed=seed)
        docs = [tok.encode(clip) for clip in clips]
    elif domain == "captions":
        tok = ImageCaptionTokenizer(resolution)
        pairs = sources.caption_folder(input, resolution) if input else sources.digit_captions(resolution, seed)
        docs = []
        for image, caption in pairs:
            which = order if order != "both" else ImageCaptionTokenizer.ORDERS[int(rng.integers(2))]
            docs.append(tok.encode(image, caption, which))
    elif domain == "math":
        tok = ByteTokenizer()
        n = count or 20000
        docs = [tok.encode(text) for text, _ in sources.math_problems(n, difficulty, seed)]
        if eval_difficulty is not None:
            n_val = max(1, int(n * val_fraction))
            val_docs = [tok.encode(text) for text, _ in sources.math_problems(n_val, eval_difficulty, seed + 1)]
    else:
        tok = ByteTokenizer()
        docs = [tok.encode(data) for data in sources.text_folder(input, doc_bytes)]
    if not docs:
        raise ValueError(f"domain={domain!r} with input={input!r} produced no documents")
    if val_docs is None:
        perm = rng.permutation(len(docs))
        n_val = int(round(len(docs) * val_fraction))
        val_docs = [docs[i] for i in perm[:n_val]]
        docs = [docs[i] for i in perm[n_val:]]
    provenance = {"domain": domain, "source": origin, "tokenizer": tok.to_dict(), "seed": seed}
    if domain == "math":
        provenance.update(difficulty=difficulty, eval_difficulty=eval_difficulty)
    return tok, docs, val_docs, provenance


def prepare(domain: str, out, **options) -> dict:
    """Write out/train and out/val shards for domain; returns {"train": meta, "val": meta}."""
    tok, train, val, provenance = build(domain, **options)
    out = Path(out)
    result = {}
    for split, docs in (("train", train), ("val", val)):
        shard = write_shard(out / split, docs, tok.vocab_size, split=split, **provenance)
        result[split] = shard.meta
        logger.info("wrote %s: %d documents, %d tokens", out / split, len(shard), shard.n_tokens)
    return result


def load(spec: dict) -> tuple[TokenShard, TokenShard]:
    """(train, val) shards from a run config's data section: {"path": DIR} (written by `fastscale data`)
    or {"dataset": DOMAIN, ...build options} (bundled or generated data, built in memory)."""
    if not isinstance(spec, dict) or ("path" in spec) == ("dataset" in spec):
        raise ValueError(f"data={spec!r}; expected a dict with either 'path' (a directory written by `fastscale data`) or 'dataset' (one of {DOMAINS})")
    if "path" in spec:
        root = Path(spec["path"])
        if not root.is_dir():
            raise FileNotFoundError(f"data.path={str(root)!r} does not exist; write it with `fastscale data DOMAIN --out {root}`")
        return TokenShard(root / "train"), TokenShard(root / "val")
    options = {k: v for k, v in spec.items() if k != "dataset"}
    tok, train, val, provenance = build(spec["dataset"], **options)
    return MemoryShard(train, tok.vocab_size, **provenance), MemoryShard(val, tok.vocab_size, **provenance)
