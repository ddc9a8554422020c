"""Per-domain tokenizers of the seed papers (Henighan et al. 2020): every document starts with BOS.

- images: pixel-channel values 0..255 in raster order (row, column, channel): 8x8x3 = 192 tokens;
- video: frames of such images in time order;
- image+caption: caption bytes (offset by 256) and pixels, caption first or image first, with SEP
  between them;
- text and math: UTF-8 bytes;
- text with a learned vocabulary: byte-level BPE (Hugging Face `tokenizers`), trained on the training
  split or loaded from a tokenizer.json, saved beside the shards and named in their metadata.

encode() returns an int64 numpy array; decode() inverts it exactly (round-trip).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Iterable

import numpy as np

logger = logging.getLogger(__name__)


class Tokenizer:
    name = "tokenizer"
    vocab_size: int
    bos: int

    def to_dict(self) -> dict:
        return {"name": self.name}


class ByteTokenizer(Tokenizer):
    """Text as UTF-8 bytes 0..255, BOS = 256."""

    name = "bytes"
    vocab_size = 257
    bos = 256

    def encode(self, text: str | bytes) -> np.ndarray:
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return np.concatenate([[self.bos], np.frombuffer(data, dtype=np.uint8)]).astype(np.int64)

    def decode(self, tokens) -> str:
        tokens = np.asarray(tokens)
        tokens = tokens[1:] if len(tokens) and tokens[0] == self.bos else tokens
        return bytes(tokens.astype(np.uint8).tolist()).decode("utf-8", errors="replace")


class ImageTokenizer(Tokenizer):
    """An image uint8 [resolution, resolution, channels] as resolution^2 * channels pixel-channel tokens."""

    name = "image"
    vocab_size = 257
    bos = 256

    def __init__(self, resolution: int = 8, channels: int = 3) -> None:
        if resolution < 1 or channels < 1:
            raise ValueError(f"ImageTokenizer: resolution={resolution}, channels={channels}; expected positive integers")
        self.resolution, self.channels = resolution, channels

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.resolution, self.resolution, self.channels)

    @property
    def tokens_per_image(self) -> int:
        return self.resolution * self.resolution * self.channels

    def _check(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image)
        if image.shape != self.shape or image.dtype != np.uint8:
            raise ValueError(f"ImageTokenizer: image of shape {image.shape} dtype {image.dtype}; expected uint8 {self.shape}")
        return image

    def encode(self, image: np.ndarray) -> np.ndarray:
        return np.concatenate([[self.bos], self._check(image).reshape(-1)]).astype(np.int64)

    def decode(self, tokens) -> np.ndarray:
        tokens = np.asarray(tokens)[1:]
        return tokens.astype(np.uint8).reshape(self.shape)

    def to_dict(self) -> dict:
        return {"name": self.name, "resolution": self.resolution, "channels": self.channels}


class VideoTokenizer(ImageTokenizer):
    """A clip uint8 [frames, resolution, resolution, channels]: its frames' tokens in time order."""

    name = "video"

    def __init__(self, frames: int = 4, resolution: int = 8, channels: int = 3) -> None:
        super().__init__(resolution, channels)
        if frames < 1:
            raise ValueError(f"VideoTokenizer: frames={frames}; expected a positive integer")
        self.frames = frames

    def encode(self, clip: np.ndarray) -> np.ndarray:
        clip = np.asarray(clip)
        if clip.shape != (self.frames, *self.shape) or clip.dtype != np.uint8:
            raise ValueError(f"VideoTokenizer: clip of shape {clip.shape} dtype {clip.dtype}; expected uint8 {(self.frames, *self.shape)}")
        return np.concatenate([[self.bos], clip.reshape(-1)]).astype(np.int64)

    def decode(self, tokens) -> np.ndarray:
        return np.asarray(tokens)[1:].astype(np.uint8).reshape(self.frames, *self.shape)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "frames": self.frames}


class ImageCaptionTokenizer(Tokenizer):
    """(image, caption) pairs: pixels 0..255, caption bytes 256..511, BOS 512, SEP 513 between the
    two parts; order "caption_first" (caption, SEP, image) or "image_first" (image, SEP, caption)."""

    name = "image_caption"
    vocab_size = 514
    bos = 512
    sep = 513
    ORDERS = ("caption_first", "image_first")

    def __init__(self, resolution: int = 8, channels: int = 3) -> None:
        self.image = ImageTokenizer(resolution, channels)

    def encode(self, image: np.ndarray, caption: str, order: str = "caption_first") -> np.ndarray:
        if order not in self.ORDERS:
            raise ValueError(f"ImageCaptionTokenizer: order={order!r}; expected one of {self.ORDERS}")
        pixels = self.image._check(image).reshape(-1).astype(np.int64)
        text = np.frombuffer(caption.encode("utf-8"), dtype=np.uint8).astype(np.int64) + 256
        parts = (text, [self.sep], pixels) if order == "caption_first" else (pixels, [self.sep], text)
        return np.concatenate([[self.bos], *parts]).astype(np.int64)

    def decode(self, tokens) -> tuple[np.ndarray, str, str]:
        """-> (image, caption, order)."""
        tokens = np.asarray(tokens)[1:]
        cut = int(np.flatnonzero(tokens == self.sep)[0])
        first, second = tokens[:cut], tokens[cut + 1 :]
        order = "image_first" if len(first) and first[0] < 256 else "caption_first"  # pixels < 256 <= bytes
        text, pixels = (first, second) if order == "caption_first" else (second, first)
        caption = bytes((text - 256).astype(np.uint8).tolist()).decode("utf-8", errors="replace")
        return pixels.astype(np.uint8).reshape(self.image.shape), caption, order

    def to_dict(self) -> dict:
        return {"name": self.name, "resolution": self.image.resolution, "channels": self.image.channels}


class BPETokenizer(Tokenizer):
    """Byte-level BPE through Hugging Face `tokenizers` (GPT-2's scheme: every byte is a base token, so
    any text round-trips and nothing is out of vocabulary). A BOS token starts every document: the special
    token "<|endoftext|>" of a trained tokenizer, or the first of BOS_CANDIDATES a loaded one defines.
    Texts are encoded without the tokenizer's own special-token template (add_special_tokens=False), so
    the document boundary is the BOS alone, as in the other domains.

    The shards' metadata records {"name": "bpe", "file": FILE, "vocab_size", "sha256"}: FILE is the
    tokenizer.json saved beside the shards (`fastscale data` writes it), resolved against the data
    directory by tokenizer_from_dict(meta, root=DIR), and the hash says it is the one the shards were
    encoded with."""

    name = "bpe"
    BOS_CANDIDATES = ("<|endoftext|>", "<|begin_of_text|>", "<s>", "<bos>", "[CLS]")
    FILE = "tokenizer.json"

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        found = [t for t in self.BOS_CANDIDATES if tokenizer.token_to_id(t) is not None]
        if not found:
            raise ValueError(f"tokenizer: defines none of the BOS tokens {self.BOS_CANDIDATES}; expected one of them to mark document starts")
        self.bos = int(tokenizer.token_to_id(found[0]))
        self.vocab_size = int(tokenizer.get_vocab_size())

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "BPETokenizer":
        """A byte-level BPE of vocab_size tokens (the 256 bytes, BOS and merges) learned from texts. A
        corpus with fewer distinct merges gives a smaller vocabulary (logged): vocab_size is the most."""
        from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

        if not (isinstance(vocab_size, int) and not isinstance(vocab_size, bool) and MIN_BPE_VOCAB <= vocab_size <= MAX_VOCAB):
            raise ValueError(f"vocab={vocab_size!r}; expected an integer from {MIN_BPE_VOCAB} (the 256 bytes and BOS) to {MAX_VOCAB}")
        tokenizer = HFTokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tokenizer.train_from_iterator(texts, trainer)
        if tokenizer.get_vocab_size() < vocab_size:
            logger.warning("BPE: the corpus supports %d tokens, fewer than vocab=%d asked for", tokenizer.get_vocab_size(), vocab_size)
        return cls(tokenizer)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BPETokenizer":
        """A tokenizer.json (Hugging Face `tokenizers` format)."""
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer={str(path)!r} does not exist; expected a tokenizer.json file")
        try:
            tokenizer = HFTokenizer.from_file(str(path))
        except Exception as error:  # tokenizers raises a bare Exception on malformed files
            raise ValueError(f"tokenizer={str(path)!r} is not a Hugging Face tokenizer.json: {error}") from None
        if tokenizer.get_vocab_size() > MAX_VOCAB:
            raise ValueError(f"tokenizer={str(path)!r} has {tokenizer.get_vocab_size():,} tokens; expected at most {MAX_VOCAB:,}")
        return cls(tokenizer)

    def save(self, path: str | os.PathLike) -> None:
        self.tokenizer.save(str(path))

    def encode(self, text: str | bytes) -> np.ndarray:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list) -> list[np.ndarray]:
        """Many documents at once (the tokenizer's own threads); bytes are read as UTF-8, invalid
        sequences replaced."""
        texts = [t.decode("utf-8", errors="replace") if isinstance(t, bytes) else t for t in texts]
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        return [np.concatenate([[self.bos], e.ids]).astype(np.int64) for e in encodings]

    def decode(self, tokens) -> str:
        tokens = np.asarray(tokens)
        tokens = tokens[1:] if len(tokens) and tokens[0] == self.bos else tokens
        return self.tokenizer.decode(tokens.tolist(), skip_special_tokens=False)

    def sha256(self) -> str:
        return hashlib.sha256(self.tokenizer.to_str().encode("utf-8")).hexdigest()

    def to_dict(self) -> dict:
        return {"name": self.name, "file": self.FILE, "vocab_size": self.vocab_size, "sha256": self.sha256()}


MIN_BPE_VOCAB = 257
MAX_VOCAB = 262_144  # token ids are stored as uint32 above 65,536 (fastscale.data.shards.dtype_for)
TOKENIZERS = {"bytes": ByteTokenizer, "image": ImageTokenizer, "video": VideoTokenizer, "image_caption": ImageCaptionTokenizer}


def tokenizer_from_dict(data: dict, root: str | os.PathLike | None = None) -> Tokenizer:
    """The tokenizer a shard's metadata names. A BPE tokenizer is read from its file in root (the data
    directory that holds the shards and tokenizer.json) and checked against the recorded hash."""
    data = dict(data)
    name = data.pop("name")
    if name == BPETokenizer.name:
        if root is None:
            raise ValueError("tokenizer_from_dict: a 'bpe' tokenizer needs root=the data directory holding its tokenizer.json")
        tok = BPETokenizer.load(Path(root) / data["file"])
        if tok.sha256() != data["sha256"]:
            raise ValueError(f"{Path(root) / data['file']}: not the tokenizer the shards were encoded with (sha256 differs from their metadata's)")
        return tok
    if name not in TOKENIZERS:
        raise ValueError(f"tokenizer name={name!r}; expected one of {sorted([*TOKENIZERS, BPETokenizer.name])}")
    return TOKENIZERS[name](**data)
