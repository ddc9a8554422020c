"""Document sources for each domain: the real data bundled with scikit-learn (8x8 handwritten digits,
two sample photographs), the text that ships with the running Python (its standard library's source
and pydoc topics), procedural math problems with a difficulty level, and users' own folders of
images, frames, captioned images or text. Each yields raw objects for the domain's tokenizer.
Nothing here downloads anything."""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import sysconfig
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

logger = logging.getLogger(__name__)

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    h, w, c = image.shape
    return image.reshape(h // factor, factor, w // factor, factor, c).mean(axis=(1, 3))


def resize(image: np.ndarray, resolution: int) -> np.ndarray:
    """Center-crop to a square and area-downsample (or nearest-upsample) to resolution x resolution, uint8 RGB."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    image = image[..., :3].astype(np.float64)
    side = min(image.shape[:2])
    top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
    image = image[top : top + side, left : left + side]
    if side >= resolution:
        cut = side - side % resolution
        image = _block_mean(image[:cut, :cut], cut // resolution)
    else:
        rows = np.arange(resolution) * side // resolution
        image = image[rows][:, rows]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def digits(resolution: int = 8) -> Iterator[tuple[np.ndarray, int]]:
    """scikit-learn's 1,797 handwritten digits (8x8, values 0..16) as RGB uint8 images, with labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    for image, label in zip(data.images, data.target):
        gray = np.rint(image * (255 / 16)).astype(np.uint8)
        yield resize(np.repeat(gray[..., None], 3, axis=2), resolution), int(label)


def _photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return [np.asarray(image) for image in load_sample_images().images]  # china.jpg, flower.jpg: 427x640x3


def photo_patches(resolution: int = 8, patch: int = 32, stride: int = 16) -> Iterator[np.ndarray]:
    """Patches patch x patch of scikit-learn's two sample photographs every `stride` pixels, area-
    downsampled to resolution x resolution: 1,950 small real images with the defaults."""
    for photo in _photos():
        h, w, _ = photo.shape
        for top in range(0, h - patch + 1, stride):
            for left in range(0, w - patch + 1, stride):
                yield resize(photo[top : top + patch, left : left + patch], resolution)


def photo_pans(count: int, frames: int = 4, resolution: int = 8, patch: int = 32, seed: int = 0) -> Iterator[np.ndarray]:
    """Video clips [frames, r, r, 3]: a camera window of patch x patch pixels panning across a sample
    photograph at a constant random velocity (up to 8 pixels per frame), each frame downsampled."""
    rng = np.random.default_rng(seed)
    photos = _photos()
    for _ in range(count):
        photo = photos[rng.integers(len(photos))]
        h, w, _ = photo.shape
        velocity = rng.integers(-8, 9, size=2)
        span = np.abs(velocity) * (frames - 1)
        top = rng.integers(0, h - patch - span[0] + 1) + (span[0] if velocity[0] < 0 else 0)
        left = rng.integers(0, w - patch - span[1] + 1) + (span[1] if velocity[1] < 0 else 0)
        clip = []
        for t in range(frames):
            y, x = top + velocity[0] * t, left + velocity[1] * t
            clip.append(resize(photo[y : y + patch, x : x + patch], resolution))
        yield np.stack(clip)


def digit_captions(resolution: int = 8, seed: int = 0) -> Iterator[tuple[np.ndarray, str]]:
    """The digits with a caption naming their label, from a few templates."""
    templates = ("a handwritten {name}", "the digit {digit}", "{name}", "a picture of the number {name} ({digit})")
    rng = np.random.default_rng(seed)
    for image, label in digits(resolution):
        yield image, templates[rng.integers(len(templates))].format(name=DIGIT_NAMES[label], digit=label)


def math_problems(count: int, difficulty: int | tuple[int, int] = (1, 3), seed: int = 0) -> Iterator[tuple[str, int]]:
    """Arithmetic problems "a op b = c" as text, with their difficulty level. Level k draws operands of
    up to k digits and, from level 3, a third operand; operations +, -, * (Saxton et al.-style
    extrapolation: train on low levels, evaluate on a higher one). Yields (text, level)."""
    low, high = (difficulty, difficulty) if isinstance(difficulty, int) else difficulty
    if not 1 <= low <= high:
        raise ValueError(f"math_problems: difficulty={difficulty!r}; expected a level >= 1 or a range (low, high) with 1 <= low <= high")
    rng = np.random.default_rng(seed)
    for _ in range(count):
        level = int(rng.integers(low, high + 1))
        terms = 2 if level < 3 else 3
        numbers = [int(rng.integers(0, 10**level)) for _ in range(terms)]
        ops = [str(rng.choice(["+", "-", "*"])) for _ in range(terms - 1)]
        expression = str(numbers[0]) + "".join(f"{op}{n}" for op, n in zip(ops, numbers[1:]))
        yield f"{expression}={eval(expression)}\n", level  # noqa: S307 (digits and + - * only)


def _files(folder: str | os.PathLike, suffixes: tuple[str, ...] | None) -> list[Path]:
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"input path {str(folder)!r} does not exist")
    if folder.is_file():
        return [folder]
    files = sorted(p for p in folder.rglob("*") if p.is_file() and (suffixes is None or p.suffix.lower() in suffixes))
    if not files:
        raise FileNotFoundError(f"input path {str(folder)!r} holds no {'files' if suffixes is None else '/'.join(suffixes)} files")
    return files


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def image_folder(folder, resolution: int = 8) -> Iterator[np.ndarray]:
    """Every image under folder (recursively, sorted by path), center-cropped and downsampled."""
    for path in _files(folder, IMAGE_SUFFIXES):
        yield resize(_read_image(path), resolution)


def video_folder(folder, frames: int = 4, resolution: int = 8) -> Iterator[np.ndarray]:
    """Each sub-folder of folder is a video whose frames are its images sorted by name; cut into clips
    of `frames` consecutive frames."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"input path {str(folder)!r} is not a folder of frame folders")
    for video in sorted(p for p in folder.iterdir() if p.is_dir()):
        images = [resize(_read_image(p), resolution) for p in _files(video, IMAGE_SUFFIXES)]
        for start in range(0, len(images) - frames + 1, frames):
            yield np.stack(images[start : start + frames])


def caption_folder(folder, resolution: int = 8) -> Iterator[tuple[np.ndarray, str]]:
    """Images with a caption in a .txt file of the same stem beside them (images without one are skipped)."""
    for path in _files(folder, IMAGE_SUFFIXES):
        caption = path.with_suffix(".txt")
        if caption.is_file():
            yield resize(_read_image(path), resolution), caption.read_text(encoding="utf-8").strip()
        else:
            logger.warning("no caption %s for %s; skipped", caption, path)


def text_folder(folder, doc_bytes: int | None = None) -> Iterator[bytes]:
    """Every file under folder as bytes; with doc_bytes, cut into documents (cut_documents)."""
    for path in _files(folder, None):
        yield from cut_documents(path.read_bytes(), doc_bytes)


def cut_documents(data: bytes, doc_bytes: int | None) -> Iterator[bytes]:
    """data whole (doc_bytes None or 0), or in pieces of at most doc_bytes cut after the last newline
    before each boundary (mid-line only where a line is longer); nothing for empty data."""
    if not doc_bytes:
        if data:
            yield data
        return
    while data:
        piece = data[:doc_bytes]
        if len(data) > doc_bytes:
            cut = piece.rfind(b"\n")
            piece = piece[: cut + 1] if cut > 0 else piece
        yield piece
        data = data[len(piece) :]


# The standard library's own tests (fixtures in odd encodings, generated data), the pydoc topics' module
# (pydoc_topics below reads its text once) and third-party packages are not the standard library's text.
STDLIB_EXCLUDED = {"test", "tests", "idle_test", "site-packages", "dist-packages", "pydoc_data", "__pycache__"}
STDLIB_LICENCE = "PSF-2.0 (Python Software Foundation License Version 2; LICENSE.txt in the standard library's folder)"


def stdlib_files() -> list[Path]:
    """The .py files of the running Python's standard library, sorted, without its tests."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if not STDLIB_EXCLUDED & set(p.relative_to(root).parts))


def pydoc_topics() -> list[bytes]:
    """The language reference topics `help()` shows (pydoc_data.topics), one document each, sorted by name."""
    from pydoc_data.topics import topics

    return [topics[name].encode("utf-8") for name in sorted(topics)]


def python_stdlib(doc_bytes: int | None = 4096) -> Iterator[bytes]:
    """The text corpus every machine with Python has: each standard-library source file and each pydoc
    topic, cut into documents of at most doc_bytes (cut_documents). About 12.5 MB on CPython 3.11
    (stdlib_corpus_info says what the running Python has): mostly Python code with its docstrings and
    comments, and ~0.5 MB of English reference prose."""
    for path in stdlib_files():
        yield from cut_documents(path.read_bytes(), doc_bytes)
    for topic in pydoc_topics():
        yield from cut_documents(topic, doc_bytes)


def stdlib_corpus_info() -> dict:
    """Where the default text comes from, for the data's metadata."""
    return {"corpus": "python-stdlib", "python": platform.python_version(), "stdlib": sysconfig.get_paths()["stdlib"],
            "licence": STDLIB_LICENCE}


def deduplicate(documents: Iterable[bytes]) -> tuple[list[bytes], int]:
    """(the documents with every exact repeat after its first occurrence removed, how many were
    removed): a held-out document that is also a training document measures memory, not modelling."""
    seen, kept, removed = set(), [], 0
    for doc in documents:
        digest = hashlib.sha256(doc).digest()
        if digest in seen:
            removed += 1
        else:
            seen.add(digest)
            kept.append(doc)
    return kept, removed

