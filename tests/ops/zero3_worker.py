"""Trains a toy model whose head is fastscale.nn.LinearCrossEntropyLoss under DeepSpeed ZeRO-3 with
two CPU ranks, and the same model in plain PyTorch on the whole batch; rank 0 writes both loss
curves to the JSON file named on the command line. Run by test_cross_entropy_zero3.py via torchrun."""

import copy
import gc
import json
import sys

import deepspeed
import torch
import torch.distributed as dist
from torch import nn

from fastscale.nn import LinearCrossEntropyLoss
from fastscale.ops import linear_cross_entropy

VOCAB, D, TOKENS_PER_RANK, STEPS, LR = 37, 16, 12, 4, 0.5


class Toy(nn.Module):
    def __init__(self, tied: bool, reduction: str):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D)
        self.mix = nn.Linear(D, D)
        self.head = LinearCrossEntropyLoss(D, VOCAB, bias=not tied, weight=self.embed.weight if tied else None, reduction=reduction)

    def forward(self, tokens, targets):
        loss = self.head(torch.tanh(self.mix(self.embed(tokens))), targets)
        return loss.mean()  # reduction "none": the mean of per-token losses


def batches(world: int):
    """The same batch every step, so that the loss must fall."""
    tokens = torch.randint(0, VOCAB, (world * TOKENS_PER_RANK,), generator=torch.Generator().manual_seed(1))
    return [tokens] * STEPS


def plain_curve(model, data):
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    curve = []
    for tokens in data:
        loss = model(tokens, tokens.roll(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append(loss.item())
    return curve


def zero3_curve(model, data, rank, world):
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        "zero_allow_untested_optimizer": True,
        "gradient_clipping": 0.0,  # DeepSpeed 0.19 clips at 1.0 unless told otherwise
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=LR), config=config)
    curve, error = [], None
    for tokens in data:
        mine = slice(rank * TOKENS_PER_RANK, (rank + 1) * TOKENS_PER_RANK)
        loss = engine(tokens[mine], tokens.roll(1)[mine])
        engine.backward(loss)
        engine.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        curve.append(mean.item() / world)
    try:  # outside the owning module's forward the weight is a partition, which the op refuses
        linear_cross_entropy(torch.randn(3, D), engine.module.head.weight, torch.zeros(3, dtype=torch.long))
    except ValueError as exc:
        error = str(exc)
    del engine
    gc.collect()
    return curve, error


def main(out_path: str):
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {}
    for tied in (False, True):
        for reduction in ("mean", "none"):
            torch.manual_seed(0)
            model = Toy(tied, reduction)
            reference = copy.deepcopy(model)
            data = batches(world)
            zero3, error = zero3_curve(model, data, rank, world)
            results[f"tied={tied} reduction={reduction}"] = {"zero3": zero3, "plain": plain_curve(reference, data), "error": error}
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
