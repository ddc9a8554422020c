"""`fastscale data DOMAIN --out DIR`: write train/val token shards (the command line; prints)."""

from __future__ import annotations

import argparse
import sys

from .prepare import DOMAINS, ORDERS, prepare


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("domain", choices=DOMAINS, help="digits/photos/images: 8x8x3 pixel images (bundled, or --input folder); video: "
                        "clips of frames (bundled photo pans, or --input folder of frame folders); captions: image+caption pairs "
                        "(bundled digits with captions, or --input folder with NAME.png + NAME.txt); math: generated problems; text: --input files, or without it the running Python's standard library "
                        "(source and pydoc topics, PSF licence), as bytes or with --bpe/--tokenizer")
    parser.add_argument("--out", required=True, help="directory to write: OUT/train and OUT/val shards")
    parser.add_argument("--input", help="your own file or folder instead of the bundled data")
    parser.add_argument("--resolution", type=int, default=8, help="image side in pixels (default 8: 8*8*3 = 192 tokens)")
    parser.add_argument("--frames", type=int, default=4, help="frames per video clip (default 4)")
    parser.add_argument("--order", choices=ORDERS, default="both", help="captions: caption before or after the pixels, or each at random (default both)")
    parser.add_argument("--count", type=int, help="documents to generate (math, bundled video)")
    parser.add_argument("--difficulty", default="1-3", help="math: a level or a range LOW-HIGH (default 1-3)")
    parser.add_argument("--eval-difficulty", type=int, help="math: hold out problems of this level instead of a random split (extrapolation)")
    parser.add_argument("--doc-bytes", type=int, default=4096, help="text: cut files into documents of at most this many bytes (0: one per file)")
    parser.add_argument("--bpe", action="store_true", help="text: train a byte-level BPE (Hugging Face tokenizers) of --vocab tokens on the "
                        "training split, saved as OUT/tokenizer.json")
    parser.add_argument("--vocab", type=int, help="text with --bpe: vocabulary size, 257 to 262,144 (e.g. 8192; 32768 and up for GPUs)")
    parser.add_argument("--tokenizer", help="text: encode with this tokenizer.json instead (copied to OUT/tokenizer.json)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="fraction of documents held out (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out split and of generated documents (video pans, captions, math)")


def _difficulty(text: str):
    try:
        if "-" in text:
            low, high = (int(x) for x in text.split("-"))
            return (low, high)
        return int(text)
    except ValueError:
        raise ValueError(f"--difficulty={text!r}; expected a level such as 3 or a range such as 1-3") from None


def run(args: argparse.Namespace) -> int:
    try:
        meta = prepare(
            args.domain, args.out, input=args.input, resolution=args.resolution, frames=args.frames, order=args.order,
            count=args.count, difficulty=_difficulty(args.difficulty), eval_difficulty=args.eval_difficulty,
            doc_bytes=args.doc_bytes or None, val_fraction=args.val_fraction, seed=args.seed,
            bpe=args.bpe, vocab=args.vocab, tokenizer=args.tokenizer,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for split, info in meta.items():
        print(f"{args.out}/{split}: {info['n_docs']:,} documents, {info['n_tokens']:,} tokens ({info['dtype']}, vocab {info['vocab_size']})")
    if meta["train"]["tokenizer"]["name"] == "bpe":
        print(f"{args.out}/tokenizer.json: byte-level BPE, {meta['train']['tokenizer']['vocab_size']:,} tokens")
    print(f'use it in a run config as "data": {{"path": "{args.out}"}}')
    return 0
