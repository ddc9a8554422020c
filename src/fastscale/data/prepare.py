"""Domain preparers: documents from a source, through the domain's tokenizer, into train/val shards.

`prepare(domain, out, ...)` writes out/train and out/val (each a token shard) and returns their
metadata; `load(spec)` gives the (train, val) shards a run config names, building bundled data in
memory when the spec names a dataset instead of a path; `labelled_split(domain, ...)` gives the
labelled digit images of the same train/val split (for fine-tuning the generative models).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import sources
from .shards import MemoryShard, TokenShard, write_shard
from .tokenizers import BPETokenizer, ByteTokenizer, ImageCaptionTokenizer, ImageTokenizer, VideoTokenizer

logger = logging.getLogger(__name__)

DOMAINS = ("digits", "photos", "images", "video", "captions", "math", "text")
ORDERS = ("caption_first", "image_first", "both")
LABELLED_DOMAINS = ("digits", "images")  # whose images carry a label (the digit)


class Split(NamedTuple):
    """One split's documents and a label per document (None where it has none)."""

    documents: list
    labels: list


class LabelledImages(NamedTuple):
    """The labelled images of one split: images uint8 [n, r, r, 3], labels int64 [n], and positions
    int64 [n], each image's index in the split's document list (a token shard's document index)."""

    images: np.ndarray
    labels: np.ndarray
    positions: np.ndarray


def _check(name, value, ok: bool, expectation: str) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r}; expected {expectation}")


def build_labelled(
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
    bpe: bool = False,
    vocab: int | None = None,
    tokenizer: str | None = None,
):
    """-> (tokenizer, train Split, val Split, provenance dict): each split's documents (int64 arrays) and
    their labels (the digit of a digit image, None for every other document). Text: input, or the
    running Python's standard library (sources.python_stdlib) without one; as bytes, or with bpe=True
    through a byte-level BPE of `vocab` tokens trained on the training split, or the tokenizer.json
    at `tokenizer`."""
    _check("domain", domain, domain in DOMAINS, f"one of {DOMAINS}")
    _check("resolution", resolution, isinstance(resolution, int) and resolution >= 1, "a positive integer")
    _check("frames", frames, isinstance(frames, int) and frames >= 1, "a positive integer")
    _check("order", order, order in ORDERS, f"one of {ORDERS}")
    _check("val_fraction", val_fraction, 0 <= val_fraction < 1, "a fraction in [0, 1)")
    _check_text_options(domain, bpe, vocab, tokenizer)
    rng = np.random.default_rng(seed)
    origin = "bundled" if input is None else str(input)
    val_docs, labels = None, None
    if domain in ("digits", "photos", "images"):
        tok = ImageTokenizer(resolution)
        if input is not None:
            labelled = [(image, None) for image in sources.image_folder(input, resolution)]
        else:
            labelled = []
            if domain in LABELLED_DOMAINS:
                labelled += list(sources.digits(resolution))
            if domain in ("photos", "images"):
                labelled += [(image, None) for image in sources.photo_patches(resolution)]
        docs = [tok.encode(image) for image, _ in labelled]
        labels = [label for _, label in labelled]
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
        tok, docs, val_docs, corpus = _text(input, doc_bytes, val_fraction, rng, bpe=bpe, vocab=vocab, tokenizer=tokenizer)
    if not docs:
        raise ValueError(f"domain={domain!r} with input={input!r} produced no documents")
    if labels is None:
        labels = [None] * len(docs)
    if val_docs is None:
        perm = rng.permutation(len(docs))
        n_val = int(round(len(docs) * val_fraction))
        val, train = (Split([docs[i] for i in part], [labels[i] for i in part]) for part in (perm[:n_val], perm[n_val:]))
    else:
        val, train = Split(val_docs, [None] * len(val_docs)), Split(docs, labels)
    provenance = {"domain": domain, "source": origin, "tokenizer": tok.to_dict(), "seed": seed}
    if domain == "math":
        provenance.update(difficulty=difficulty, eval_difficulty=eval_difficulty)
    if domain == "text":
        provenance.update(corpus)
    return tok, train, val, provenance


def _check_text_options(domain: str, bpe: bool, vocab, tokenizer) -> None:
    if domain != "text":
        _check("bpe", bpe, not bpe and vocab is None and tokenizer is None, f"False (with no vocab or tokenizer): a learned vocabulary is for domain 'text', not {domain!r}")
        return
    if tokenizer is not None:
        _check("vocab", vocab, vocab is None, f"None with tokenizer={tokenizer!r}: a loaded tokenizer brings its vocabulary")
    elif bpe:
        _check("vocab", vocab, vocab is not None, "a vocabulary size for the BPE to learn, such as 8192")
    else:
        _check("vocab", vocab, vocab is None, "None without bpe=True (bytes have 257 tokens)")


def _text(input, doc_bytes, val_fraction: float, rng, *, bpe: bool, vocab, tokenizer):
    """-> (tokenizer, train documents, val documents, corpus provenance). The documents are deduplicated
    and split before any tokenizer is trained: a BPE learns its merges from the training split only."""
    raw = sources.python_stdlib(doc_bytes) if input is None else sources.text_folder(input, doc_bytes)
    texts, duplicates = sources.deduplicate(raw)
    corpus = sources.stdlib_corpus_info() if input is None else {"corpus": str(input)}
    corpus.update(corpus_bytes=sum(len(t) for t in texts), corpus_documents=len(texts), duplicates_removed=duplicates)
    perm = rng.permutation(len(texts))
    n_val = int(round(len(texts) * val_fraction))
    val_texts, train_texts = [texts[i] for i in perm[:n_val]], [texts[i] for i in perm[n_val:]]
    if tokenizer is not None:
        tok = BPETokenizer.load(tokenizer)
    elif bpe:
        tok = BPETokenizer.train((t.decode("utf-8", errors="replace") for t in train_texts), vocab)
    else:
        tok = ByteTokenizer()
    encode = tok.encode_batch if isinstance(tok, BPETokenizer) else (lambda docs: [tok.encode(d) for d in docs])
    return tok, encode(train_texts), encode(val_texts), corpus


def build(domain: str, **options):
    """-> (tokenizer, train documents, val documents, provenance dict), documents as int64 arrays;
    options as build_labelled's."""
    tok, train, val, provenance = build_labelled(domain, **options)
    return tok, train.documents, val.documents, provenance


def labelled_split(domain: str, **options) -> tuple[LabelledImages, LabelledImages]:
    """The digit images of build(domain, **options)'s train and val splits with their labels: the same
    code draws the split, so a classifier fine-tuned on `train` sees only images the generative
    models trained on, and `val` holds only images none of them saw."""
    _check("domain", domain, domain in LABELLED_DOMAINS, f"one of {LABELLED_DOMAINS} (the domains with labelled images)")
    _check("input", options.get("input"), options.get("input") is None, "None: a folder of images carries no labels (only the bundled digits do)")
    tok, train, val, _ = build_labelled(domain, **options)
    return _labelled_images(tok, train), _labelled_images(tok, val)


def _labelled_images(tok: ImageTokenizer, split: Split) -> LabelledImages:
    positions = np.array([i for i, label in enumerate(split.labels) if label is not None], dtype=np.int64)
    images = np.stack([tok.decode(split.documents[i]) for i in positions]) if len(positions) else np.zeros((0, *tok.shape), np.uint8)
    return LabelledImages(images, np.array([split.labels[i] for i in positions], dtype=np.int64), positions)


def prepare(domain: str, out, **options) -> dict:
    """Write out/train and out/val shards for domain (and out/tokenizer.json for a BPE vocabulary, which
    the shards' metadata names); returns {"train": meta, "val": meta}."""
    tok, train, val, provenance = build(domain, **options)
    out = Path(out)
    if isinstance(tok, BPETokenizer):
        out.mkdir(parents=True, exist_ok=True)
        tok.save(out / tok.FILE)
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
