"""`fastscale sample RUN_DIR`: samples from a trained run, decoded with the run's own tokenizer.

The model comes back from the run's newest intact checkpoint (fastscale.sweep.evaluation.load_trained:
any ZeRO stage, loaded as data only) and its tokenizer from the data metadata the trainer recorded in
the run's config.json, so a sample is read exactly as the run's training documents were written:

- images (and video): each sample is BOS followed by one whole image (clip); they are drawn as a PNG
  grid, pixels enlarged `scale` times, a clip's frames side by side;
- image+caption: the prompt is a caption; the model draws the image that follows it (caption first,
  the order the captions domain trains on both ways);
- text and math (bytes or BPE): BOS, the prompt, then new tokens until the context is full or the
  model starts a new document (BOS); the samples are text.

Sampling is GPT.generate (temperature, top-k; no KV cache, fine at the sizes a sweep trains) under
torch's generator seeded with `seed` inside torch.random.fork_rng: the same seed gives the same samples
and the caller's random state is left as it was.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from io import BytesIO
from pathlib import Path

import numpy as np

from fastscale.io import read_json, write_atomically

logger = logging.getLogger(__name__)

IMAGE_TOKENIZERS = ("image", "video", "image_caption")


def run_tokenizer(run_dir):
    """The tokenizer the run's training shard was written with (a BPE one from its data directory)."""
    from fastscale.data.tokenizers import tokenizer_from_dict

    config = read_json(Path(run_dir) / "config.json", what="the run's config.json")
    meta = config["data"]["train"].get("tokenizer")
    if meta is None:
        raise ValueError(f"run_dir={str(run_dir)!r}: its config.json records no tokenizer with its training data")
    return tokenizer_from_dict(meta, root=(config["run"]["data"] or {}).get("path"))


def prompt_tokens(tokenizer, prompt: str | None) -> np.ndarray:
    """The tokens a sample starts from: BOS, then the prompt as the tokenizer writes it in a document
    (a caption and SEP for image+caption runs). Image and video runs sample whole images: no prompt."""
    if tokenizer.name in ("image", "video"):
        if prompt:
            raise ValueError(f"prompt={prompt!r}: this run models {tokenizer.name}s, which are sampled whole from BOS; omit the prompt")
        return np.array([tokenizer.bos], dtype=np.int64)
    if tokenizer.name == "image_caption":
        if not prompt:
            raise ValueError("prompt=None: an image+caption run draws the image of a caption; pass the caption as the prompt")
        caption = np.frombuffer(prompt.encode("utf-8"), dtype=np.uint8).astype(np.int64) + 256
        return np.concatenate([[tokenizer.bos], caption, [tokenizer.sep]]).astype(np.int64)
    return tokenizer.encode(prompt or "")


def new_tokens(tokenizer, seq_len: int, n_prompt: int, tokens: int | None) -> int:
    """How many tokens to sample: one image (clip) for image runs; for text `tokens`, by default what
    fills the model's context after the prompt."""
    if tokenizer.name == "image":
        return tokenizer.tokens_per_image
    if tokenizer.name == "video":
        return tokenizer.frames * tokenizer.tokens_per_image
    if tokenizer.name == "image_caption":
        return tokenizer.image.tokens_per_image
    if tokens is None:
        if n_prompt >= seq_len:
            raise ValueError(f"prompt: {n_prompt} tokens with BOS fill the model's context of seq_len={seq_len}; shorten it or pass tokens")
        return seq_len - n_prompt
    return tokens


def draw(model, prompt: np.ndarray, *, n: int, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
         seed: int = 0) -> np.ndarray:
    """n samples [n, len(prompt) + max_new_tokens] (int64) continuing prompt, by GPT.generate."""
    import torch

    start = torch.from_numpy(np.asarray(prompt, dtype=np.int64)).repeat(n, 1)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        return model.generate(start, max_new_tokens, temperature=temperature, top_k=top_k).numpy()


def decode(tokenizer, rows: np.ndarray, n_prompt: int) -> list:
    """Each sample as the run's documents read: an image uint8 [H, W, C] (a clip [F, H, W, C]) or a text.
    A text ends where the model began a new document (its first BOS after the prompt). Tokens outside
    the pixel range in an image are logged and drawn as 0."""
    if tokenizer.name in IMAGE_TOKENIZERS:
        pixels = rows[:, n_prompt:]
        invalid = int((pixels > 255).sum())
        if invalid:
            logger.warning("%d of %d sampled pixel values were not pixel tokens (0-255); they are drawn as 0", invalid, pixels.size)
        pixels = np.where(pixels > 255, 0, pixels).astype(np.uint8)
        return [row.reshape(_image_shape(tokenizer)) for row in pixels]
    texts = []
    for row in rows:
        ends = np.flatnonzero(row[n_prompt:] == tokenizer.bos)
        texts.append(tokenizer.decode(row[: n_prompt + ends[0]] if len(ends) else row))
    return texts


def _image_shape(tokenizer) -> tuple:
    if tokenizer.name == "video":
        return (tokenizer.frames, *tokenizer.shape)
    return tokenizer.image.shape if tokenizer.name == "image_caption" else tokenizer.shape


def image_grid(images: list[np.ndarray], *, scale: int = 8, gap: int = 2) -> np.ndarray:
    """Images [H, W, C] (or clips [F, H, W, C], one per grid row of frames) enlarged scale times
    (nearest pixel) in a near-square grid on white, gap pixels apart: uint8 [rows, cols, C]."""
    tiles = [np.concatenate(list(clip), axis=1) if clip.ndim == 4 else clip for clip in images]
    tiles = [tile.repeat(scale, axis=0).repeat(scale, axis=1) for tile in tiles]
    height, width, channels = tiles[0].shape
    columns = 1 if images[0].ndim == 4 else math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    grid = np.full((rows * (height + gap) + gap, columns * (width + gap) + gap, channels), 255, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        top, left = gap + (i // columns) * (height + gap), gap + (i % columns) * (width + gap)
        grid[top : top + height, left : left + width] = tile
    return grid


def png_bytes(grid: np.ndarray) -> bytes:
    from PIL import Image

    image = Image.fromarray(grid[:, :, 0] if grid.shape[2] == 1 else grid)
    buffer = BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (train.py --out, or a sweep's OUT/runs/NAME) with a checkpoint")
    parser.add_argument("--n", type=int, default=8, help="samples to draw")
    parser.add_argument("--prompt", help="text the samples continue (text runs) or the caption to draw (image+caption runs)")
    parser.add_argument("--tokens", type=int, help="new tokens per text sample (default: what fills the context after the prompt)")
    parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature")
    parser.add_argument("--top-k", type=int, help="sample from the k most likely tokens only (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same samples")
    parser.add_argument("--scale", type=int, default=8, help="pixels per image pixel in the PNG grid")
    parser.add_argument("--out", help="where to write the samples (default: RUN_DIR/samples.png for images, RUN_DIR/samples.txt for text)")


def _check(args: argparse.Namespace) -> None:
    for name in ("n", "tokens", "top_k", "scale"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')}={value}; expected a positive integer")
    if not args.temperature > 0:
        raise ValueError(f"--temperature={args.temperature}; expected a positive number (1.0 samples the model's distribution)")


def run(args: argparse.Namespace) -> int:
    """The command: sample, write the PNG grid or the text file, print where (and the texts)."""
    from fastscale.sweep.evaluation import load_trained, newest_checkpoint

    try:
        _check(args)
        tokenizer = run_tokenizer(args.run_dir)
        checkpoint = newest_checkpoint(args.run_dir)
        model = load_trained(args.run_dir)
        prompt = prompt_tokens(tokenizer, args.prompt)
        count = new_tokens(tokenizer, model.config.seq_len, len(prompt), args.tokens)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows = draw(model, prompt, n=args.n, max_new_tokens=count, temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    samples = decode(tokenizer, rows, len(prompt))
    images = tokenizer.name in IMAGE_TOKENIZERS
    out = Path(args.out or Path(args.run_dir) / ("samples.png" if images else "samples.txt"))
    if images:
        write_atomically(out, png_bytes(image_grid(samples, scale=args.scale)))
    else:
        text = "".join(f"--- sample {i} ---\n{sample}\n" for i, sample in enumerate(samples))
        write_atomically(out, text)
        print(text, end="")
    print(f"{args.n} sample(s) from {checkpoint} (temperature {args.temperature}, top-k {args.top_k or 'all'}, seed {args.seed}): wrote {out}")
    return 0
