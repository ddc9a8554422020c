"""The named sweeps (`fastscale sweep OUT --preset NAME`): the seed papers' studies at a scale a 2-core
CPU runs in minutes. Every preset trains fp32 on one rank per run (ZeRO-0), Kaplan et al.'s learning
rate by size (eq. D.1), a cosine schedule to a tenth of the peak, and logs every step with the gradient
noise scale every 10 steps. Their times and results are in the README (Results); the pilot
measurements behind the choices below are in benchmarks/results/notes.md.
"""

# what every preset shares; each sets its evaluation and checkpoint intervals
TRAIN = {
    "warmup_steps": 20, "decay": "cosine", "min_lr_ratio": 0.1, "weight_decay": 0.1, "log_interval": 1,
    "keep_checkpoints": 2, "noise_scale_interval": 10, "noise_scale_ema": 0.9,
}


def _deepspeed(batch: int, micro: int) -> dict:
    return {
        "train_batch_size": batch, "train_micro_batch_size_per_gpu": micro, "gradient_clipping": 1.0,
        "zero_optimization": {"stage": 0}, "steps_per_print": 1000000000, "wall_clock_breakdown": False,
    }


PRESETS = {
    # 8x8x3 images (scikit-learn's digits and sample-photo patches, 192 tokens + BOS each), seven sizes
    # over two decades whose widths all differ (head_dim 16: d_model 32, 48, 64, 80, 96, 128, 160; with
    # head_dim 32, pairs of sizes shared a width and the deeper one was no better at this scale), each
    # trained on ~one epoch of the 3,372 training images (389 steps of 8 rows), on two thirds and on a
    # third of it (259 and 130 steps, each its own full schedule): with one budget every run ends at
    # C = 6 N D for the same D and the frontier orders the runs by N almost by construction; the short
    # runs of each size compete at the compute of the long runs of a smaller one. Three token budgets,
    # not two: Chinchilla's L(N, D) = E + A/N^alpha + B/D^beta cannot tell E from B/D^beta with two.
    # Evaluation: 94 batches of 4 rows = the whole held-out set of 375 images, every 26 steps: 15 points
    # per long run, 10 and 5 per shorter one, the learning curves of the frontier: the smoothed training loss
    # of 8-row batches (digits and photographs mixed) put L(C)'s L_inf below L(N)'s, the held-out curves
    # do not (notes.md), at the cost of the evaluations' time.
    # Seeds: a second one for the three smallest sizes (their runs are the cheapest), so the report's
    # bootstrap over sizes resamples each size with its seeds and the seed-to-seed spread is measured.
    "image8": {
        "name": "image8",
        "description": "8x8 images: L(N), L(C), the compute-efficient frontier and N_opt(C)",
        "data": {"dataset": "images", "resolution": 8},
        "seq_len": 193,
        "tokens_per_item": 192,
        "sizes": [1e4, 2e4, 5e4, 7e4, 2e5, 4e5, 1e6],
        "tokens": [2e5, 4e5, 6e5],
        "seeds": [[0, 1], [0, 1], [0, 1], [0], [0], [0], [0]],
        "model": {"head_dim": 16},
        "lr": "kaplan",
        "train": {**TRAIN, "eval_interval": 26, "eval_batches": 94, "checkpoint_interval": 50},
        "deepspeed": _deepspeed(8, 4),
    },
    # IsoFLOP profiles (Hoffmann et al. 2022, approach 2) on image8's data and training settings: every
    # size at each of three compute budgets, so each budget's loss against N has a minimum inside the sizes.
    # At this scale the loss is limited by optimizer steps far more than by parameters, so compute-optimal
    # models are tiny: head_dim 8 gives one-layer widths 8, 16, 24, 32 (N = 768, 3,072, 6,912, 12,288),
    # and on pilot sweeps these budgets sit where the minimum moves from 3,072 towards 6,912 (below them
    # the smallest size wins: notes.md). Every run repeats the 650,796 training tokens (1.1 to 20 epochs):
    # the report's repeated-data section applies. Evaluations on the whole held-out set every 500 steps.
    "isoflop": {
        "name": "isoflop",
        "description": "8x8 images at three compute budgets: IsoFLOP profiles, N_opt(C) and D_opt(C), repeated epochs",
        "data": {"dataset": "images", "resolution": 8},
        "seq_len": 193,
        "tokens_per_item": 192,
        "sizes": [7e2, 3e3, 7e3, 1.2e4],
        "compute": [8e10, 1.2e11, 1.8e11],
        "seeds": [0],
        "model": {"head_dim": 8},
        "lr": "kaplan",
        "train": {**TRAIN, "eval_interval": 500, "eval_batches": 94, "checkpoint_interval": 500},
        "deepspeed": _deepspeed(8, 4),
    },
    # digits with template captions (fastscale.data.sources.digit_captions), both orders: 1,617 training
    # and 180 held-out pairs of 197 to 227 tokens. seq_len 227 holds the longest, so with "documents"
    # packing every row is one whole pair (padded; two never fit). Five sizes of distinct widths
    # (head_dim 16), each trained on 7.3e5 tokens = 400 steps of 8 rows (~2 epochs); the eval loss covers
    # all 180 held-out pairs (45 batches of 4 rows). Rotary positions: with learned absolute positions a
    # pixel sits at a different position after a caption (of 5 to 33 bytes) than after BOS, and finding
    # the pixel grid again put L(image | caption) far above L(image), where with rotary positions the two
    # image losses agree (notes.md). No tokens_per_item: a document is an image and a caption, so the sweep
    # report's per-token losses have no per-image reading (the study's section gives nats per image and
    # per caption).
    "multimodal": {
        "name": "multimodal",
        "description": "image+caption pairs in both orders: I(image; caption) = L(image) - L(image | caption) against N",
        "data": {"dataset": "captions", "order": "both", "resolution": 8},
        "seq_len": 227,
        "packing": "documents",
        "sizes": [1e4, 3e4, 7e4, 2e5, 5e5],
        "tokens": [7.264e5],
        "seeds": [0],
        "model": {"head_dim": 16, "positions": "rotary"},
        "lr": "kaplan",
        "train": {**TRAIN, "eval_interval": 200, "eval_batches": 45, "checkpoint_interval": 100},
        "deepspeed": _deepspeed(8, 4),
        "study": {"kind": "multimodal"},
    },
    # Levels 1-3 of 40,000 problems (36,000 for training: ~440k tokens, 12.2 per problem), evaluated on
    # levels 1-5. seq_len 64 holds any problem up to level 9 (6k + 6 tokens with BOS), so "documents"
    # packing keeps every problem whole in a row (about five per row). Six sizes over 1.7 decades of
    # distinct widths (head_dim 16), each trained on 6e5 tokens (~1.4 epochs: 586 steps of 16 rows).
    "math": {
        "name": "math",
        "description": "train on arithmetic of levels 1-3, evaluate the loss per level 1-5 against N",
        "data": {"dataset": "math", "difficulty": [1, 3], "count": 40000, "seed": 0},
        "seq_len": 64,
        "packing": "documents",
        "sizes": [1e4, 2e4, 5e4, 1e5, 2e5, 5e5],
        "tokens": [6e5],
        "seeds": [0],
        "model": {"head_dim": 16},
        "lr": "kaplan",
        "train": {**TRAIN, "eval_interval": 200, "eval_batches": 8, "checkpoint_interval": 100},
        "deepspeed": _deepspeed(16, 16),
        "study": {"kind": "math", "eval_levels": [1, 2, 3, 4, 5], "eval_count": 256, "eval_seed": 1000},
    },
    # The digits alone (1,617 training images of 193 tokens), five sizes over 1.3 decades of distinct widths
    # (head_dim 16: d_model 32, 48, 64, 80, 96), each trained on ~one epoch (201 steps of 8 rows), then
    # fine-tuned for 150 steps of 32 digits (~3 epochs of the training digits; 16 digits a step left the
    # loss higher: notes.md) and scored on the 180 held-out digits, with the from-scratch baseline.
    "classify": {
        "name": "classify",
        "description": "generative pretraining on the digits, then fine-tuning on their labels: classification loss and error against N",
        "data": {"dataset": "digits", "resolution": 8},
        "seq_len": 193,
        "tokens_per_item": 192,
        "packing": "documents",
        "sizes": [1e4, 2e4, 5e4, 7e4, 2e5],
        "tokens": [3.1e5],
        "seeds": [0],
        "model": {"head_dim": 16},
        "lr": "kaplan",
        "train": {**TRAIN, "eval_interval": 100, "eval_batches": 23, "checkpoint_interval": 50},
        "deepspeed": _deepspeed(8, 8),
        "study": {"kind": "classify", "steps": 150, "batch_size": 32, "lr": 3e-3, "weight_decay": 0.0, "seed": 0, "baseline": True},
    },
    # Video (Henighan et al. 2020): 2,000 clips of 4 frames of 8x8 RGB (fastscale.data.sources.photo_pans: a
    # window panning across a sample photograph; 1,800 for training, 1.38M tokens), BOS and 768 pixel tokens a
    # clip, "documents" packing so each row is one whole clip. image8's six smallest sizes (distinct widths,
    # head_dim 16), each trained on 8e5 tokens (260 steps of 4 clips, 0.58 epoch: no clip repeated), held-out
    # evaluations of 40 clips every 26 steps for the frontier's learning curves. The study scores all 200
    # held-out clips: the loss of frame 1 alone and of each later frame given the earlier ones, against N.
    # Measured: 18 min for the sweep and its report at load 10-21 (other work and the resolutions study beside
    # it; ~6 min of training when quiet, estimated from the runs' tokens/s). At this scale the earlier frames
    # remove 0.3-0.5% of frame 2's loss and nothing of frames 3-4; rotary positions (10 min at load 7-11)
    # gave 0.3-0.9% for frame 2 at higher losses (768 against 716 nats/frame at N = 3.9e5).
    "video": {
        "name": "video",
        "description": "4-frame 8x8 video clips: L(N), and each frame's loss given the earlier frames against N",
        "data": {"dataset": "video", "frames": 4, "resolution": 8, "count": 2000},
        "seq_len": 769,
        "tokens_per_item": 768,
        "packing": "documents",
        "sizes": [1e4, 2e4, 5e4, 7e4, 2e5, 4e5],
        "tokens": [8e5],
        "seeds": [0],
        "model": {"head_dim": 16},
        "lr": "kaplan",
        "train": {**TRAIN, "eval_interval": 26, "eval_batches": 10, "checkpoint_interval": 100},
        "deepspeed": _deepspeed(4, 4),
        "study": {"kind": "video"},
    },
    # The same images at several resolutions (Henighan et al. 2020, section 2): the 1,950 photo patches
    # (32x32 pixels of scikit-learn's two sample photographs, area-downsampled; digits are 8x8 at the source
    # and would only be upsampled), 1,755 for training. This entry is the 8x8 grid; `fastscale resolutions
    # OUT` trains it at every resolution of the study's list (fastscale.sweep.domains.resolution_specs:
    # seq_len 3 r^2 + 1, the token budget scaled by the seq_len, so every resolution trains 220 steps of 8
    # images, one epoch) and compares them. Five sizes of distinct widths (head_dim 16). 32x32 (3,073-token
    # rows) would take hours on a CPU: `--resolutions 8 16 32` on a GPU. Measured: 18 min for both grids, their
    # reports and the comparison at load 9-20 (the video preset and other work beside it; 8x8 took 6 min of it).
    "resolutions": {
        "name": "resolutions",
        "description": "photo patches at 8x8 (and 16x16 with `fastscale resolutions`): L(N) per resolution in nats per image, N forecasts",
        "data": {"dataset": "photos", "resolution": 8},
        "seq_len": 193,
        "tokens_per_item": 192,
        "packing": "documents",
        "sizes": [1e4, 2e4, 5e4, 7e4, 2e5],
        "tokens": [3.4e5],
        "seeds": [0],
        "model": {"head_dim": 16},
        "lr": "kaplan",
        "train": {**TRAIN, "eval_interval": 22, "eval_batches": 12, "checkpoint_interval": 100},
        "deepspeed": _deepspeed(8, 4),
        "study": {"kind": "resolutions", "resolutions": [8, 16]},
    },
    # Kaplan et al. 2020's language setting at CPU scale: the running Python's standard library (source and
    # pydoc topics, ~11.8 MB after deduplication, PSF licence; no download), a byte-level BPE of 8,192 tokens
    # learned from the training split (2.8M training tokens, 0.31M held out). Four sizes, each at two aspect
    # ratios (d_model / n_layer targets 2 and 16, Kaplan's Figure 5): with head_dim 8 a deep narrow shape
    # (7 to 13 layers of width 16 to 32) and a shallow wide one (2 to 4 layers of width 32 to 56). Total N is
    # dominated by the embedding and the output projection (2 x 8,192 x d_model), so the wide shapes carry
    # 1.6 to 2.3 times the total N of the deep ones at nearly the same non-embedding N: the contrast of Kaplan's Figure 6. Two token budgets
    # per size (2e5, 6e5: under a quarter of an epoch, no token repeated), held-out evaluations every 20
    # steps for the learning curves of L(D) and L(N, D). The study measures the loss's memory per micro-batch
    # (1,024 tokens) fused against eager. V up to 131,072 works on GPUs ("vocab" in "data").
    "text": {
        "name": "text",
        "description": "Python standard library text, byte-level BPE of 8,192 tokens: L(N) non-embedding vs total, L(D), L(N, D), B_crit(L), loss memory",
        "data": {"dataset": "text", "bpe": True, "vocab": 8192},
        "seq_len": 128,
        "sizes": [2e4, 4e4, 8e4, 1.6e5],
        "tokens": [2e5, 6e5],
        "seeds": [0],
        "model": {"head_dim": 8},
        "aspect_ratios": [2, 16],
        "lr": "kaplan",
        "train": {**TRAIN, "eval_interval": 20, "eval_batches": 12, "checkpoint_interval": 100},
        "deepspeed": _deepspeed(16, 8),
        "study": {"kind": "text"},
    },
}
