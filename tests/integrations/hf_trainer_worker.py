"""Trains tiny random causal LMs with transformers' Trainer under DeepSpeed ZeRO-3 (two CPU ranks,
gloo), twice per architecture: the stock model and the same model after apply_fastscale, with the
same seed, data and config; rank 0 writes both runs' logged losses per step to the JSON file named
on the command line. Run by test_hf_trainer.py under torchrun."""

import json
import os
import sys
import tempfile

import torch
import torch.distributed as dist
from accelerate import PartialState
from accelerate.state import AcceleratorState
from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

from fastscale.integrations.transformers import apply_fastscale
from fastscale.integrations.transformers import loss as fused_loss
from hf_models import VOCAB, config

STEPS, LENGTH, SEQUENCES = 4, 15, 16
ZERO3 = {
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "train_batch_size": "auto",
    "gradient_clipping": "auto",
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    "zero_allow_untested_optimizer": True,
}


class LoggedLosses(TrainerCallback):
    def __init__(self):
        self.losses = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])


def dataset():
    """Fixed sequences whose labels ignore a different number of tokens each, so the accumulated
    micro-batches hold different numbers of targets and num_items_in_batch matters."""
    generator = torch.Generator().manual_seed(3)
    rows = []
    for i in range(SEQUENCES):
        input_ids = torch.randint(0, VOCAB, (LENGTH,), generator=generator)
        labels = input_ids.clone()
        labels[: i % 7] = -100
        rows.append({"input_ids": input_ids, "labels": labels})
    return rows


def losses(kind: str, fused: bool) -> list[float]:
    AcceleratorState._reset_state()  # each run's Trainer makes its Accelerator anew; the gloo state stays
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            out, per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=STEPS, learning_rate=3e-3,
            lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, save_strategy="no", report_to=[], seed=0,
            max_grad_norm=1.0, deepspeed=ZERO3, accelerator_config={"use_configured_state": True},
            dataloader_num_workers=0, disable_tqdm=True,
        )
        torch.manual_seed(0)  # ZeRO-3 builds the model partitioned (zero.Init), after TrainingArguments
        model = AutoModelForCausalLM.from_config(config(kind), attn_implementation="sdpa")
        if fused:
            apply_fastscale(model)
        logged = LoggedLosses()
        trainer = Trainer(model=model, args=args, train_dataset=dataset(), callbacks=[logged])
        assert trainer.model_accepts_loss_kwargs  # so it passes num_items_in_batch
        trainer.train()
        return logged.losses


def configure_gloo() -> None:
    """On a machine without GPUs accelerate finds no backend for DeepSpeed and would run each rank as a
    world of one; a DeepSpeed state on gloo configured first is used by the TrainingArguments."""
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    PartialState(backend="gloo")
    del os.environ["ACCELERATE_USE_DEEPSPEED"]


def counting_fused_loss_calls() -> list[int]:
    """Counts the calls of linear_cross_entropy made by apply_fastscale's loss."""
    calls = [0]
    real = fused_loss.linear_cross_entropy

    def counted(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    fused_loss.linear_cross_entropy = counted
    return calls


def main(out_path: str):
    configure_gloo()
    calls = counting_fused_loss_calls()
    results = {kind: {"stock": losses(kind, False), "fastscale": losses(kind, True)} for kind in ("llama", "gpt2")}
    results["fused_loss_calls"], results["world_size"] = calls[0], dist.get_world_size()
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
