"""The Trainer against the plain PyTorch loop it replaces: the same GPT, rows, AdamW, warmup+cosine
schedule and gradient clipping (clip_grad_norm_), step for step. On one rank at ZeRO-0 in fp32 the
Trainer clips with its own fused norm and skips DeepSpeed's all-reduce over itself; the losses, the
logged pre-clip gradient norms and the final weights must still be the plain loop's."""

import json
import sys
import textwrap

import processes

SCRIPT = textwrap.dedent(
    """
    import json, sys, tempfile
    import torch
    from fastscale.data import PackedRows, collate, load, rows_for
    from fastscale.io import read_metrics
    from fastscale.model import GPT, GPTConfig
    from fastscale.train import Trainer, TrainSettings, lr_multiplier

    CLIP, BATCH, STEPS = float(sys.argv[1]), 4, 6
    train, _ = load({"dataset": "digits"})
    rows = PackedRows(train, 65)
    config = GPTConfig(vocab_size=train.vocab_size, seq_len=65, n_layer=2, d_model=32, n_head=2)
    settings = TrainSettings(steps=STEPS, warmup_steps=2, lr=3e-3, log_interval=1, noise_scale_interval=0, eval_interval=0,
                             checkpoint_interval=0, data_workers=0, seed=3)

    torch.manual_seed(settings.seed)
    plain = GPT(config)
    groups = [{"params": [p for p in plain.parameters() if p.ndim >= 2], "weight_decay": settings.weight_decay},
              {"params": [p for p in plain.parameters() if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=settings.lr, betas=settings.betas, eps=settings.eps, fused=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(
        s, total_steps=STEPS, warmup_steps=settings.warmup_steps, decay=settings.decay, min_lr_ratio=settings.min_lr_ratio))
    losses, norms = [], []
    for step in range(STEPS):
        data = collate([rows[int(i)] for i in rows_for(len(rows), settings.seed, step * BATCH, BATCH)])
        loss = plain(data["idx"], data["targets"], cu_seqlens=data["cu_seqlens"], max_seqlen=data["max_seqlen"], positions=data["positions"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(plain.parameters(), CLIP).item())
        optimizer.step()
        schedule.step()
        losses.append(loss.item())

    torch.manual_seed(settings.seed)
    model = GPT(config)
    ds = {"train_batch_size": BATCH, "train_micro_batch_size_per_gpu": BATCH, "gradient_clipping": CLIP, "zero_optimization": {"stage": 0}}
    with tempfile.TemporaryDirectory() as out:
        Trainer(model, ds, rows, out_dir=out, collate_fn=collate, settings=settings).fit()
        records = read_metrics(out + "/metrics.jsonl").records
    difference = max((a - b).abs().max().item() for a, b in zip(model.parameters(), plain.parameters()))
    print("RESULT", json.dumps({"plain": [losses, norms], "trainer": [[r["loss"] for r in records], [r["grad_norm"] for r in records]],
                                "weights": difference}))
    """
)


def run(clip: float) -> dict:
    done = processes.run([sys.executable, "-c", SCRIPT, str(clip)], capture_output=True, text=True, env=processes.training_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))[len("RESULT "):])


def test_the_trainer_clips_and_steps_as_the_plain_loop():
    result = run(0.05)  # far below these gradients' norms: every step is clipped
    plain_losses, plain_norms = result["plain"]
    losses, norms = result["trainer"]
    assert min(plain_norms) > 0.05
    assert losses == plain_losses  # bit for bit: the same float32 operations in the same order
    assert norms == plain_norms
    assert result["weights"] == 0.0
