"""Per-domain tokenizers of the seed papers (Henighan et al. 2020): every document starts with BOS.

- images: pixel-channel values 0..255 in raster order (row, column, channel): 8x8x3 = 192 tokens;
- video: frames of such images in time order;
- image+caption: caption bytes (offset by 256) and pixels, caption first or image first, with SEP
  between them;
- text and math: UTF-8 bytes.

encode() returns an int64 numpy array; decode() inverts it exactly (round-trip).
"""

from __future__ import annotations

import numpy as np


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


TOKENIZERS = {"bytes": ByteTokenizer, "image": ImageTokenizer, "video": VideoTokenizer, "image_caption": ImageCaptionTokenizer}


def tokenizer_from_dict(data: dict) -> Tokenizer:
    data = dict(data)
    name = data.pop("name")
    if name not in TOKENIZERS:
        raise ValueError(f"tokenizer name={name!r}; expected one of {sorted(TOKENIZERS)}")
    return TOKENIZERS[name](**data)
