"""One rank of a tiny GPT run that counts its host syncs (started by torchrun from test_sync_free_step.py).

Every way Python code reads a tensor's value on the host (Tensor.item, tolist, numpy, bool, float, int,
index) and every torch.distributed collective is wrapped. A call counts when the first frame outside
torch that made it is fastscale's own code, outside fastscale.data (on a GPU machine the data pipeline
runs in DataLoader workers on host tensors: no wait for the device). DeepSpeed's own calls are
DeepSpeed's. Rank 0's callback closes each step's count; the counts go to OUT/syncs.json.

    torchrun --nproc_per_node 2 sync_worker.py OUT
"""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from fastscale.data import PackedRows, collate, load
from fastscale.model import GPT, GPTConfig
from fastscale.train import Trainer

FASTSCALE = str(Path(__import__("fastscale").__file__).resolve().parent)
TORCH = str(Path(torch.__file__).resolve().parent)
counts = {"step": [], "current": []}


def ours() -> str | None:
    """file:line of the first caller outside torch and this module, if it is fastscale's (not data's)."""
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename.startswith(TORCH) or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    if frame is None:
        return None
    name = str(Path(frame.f_code.co_filename).resolve())
    if name.startswith(FASTSCALE) and not name.startswith(os.path.join(FASTSCALE, "data")):
        return f"{os.path.relpath(name, FASTSCALE)}:{frame.f_lineno}"
    return None


def counted(owner, name: str, kind: str) -> None:
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        where = ours()
        if where:
            counts["current"].append(f"{kind} {name} at {where}")
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


for method in ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__"):
    counted(torch.Tensor, method, "host read")
for collective in ("all_reduce", "all_gather", "all_gather_object", "broadcast", "reduce", "reduce_scatter", "barrier", "all_to_all"):
    counted(dist, collective, "collective")


def close_step(record: dict) -> None:
    counts["step"].append({"step": record["step"], "logged": "loss" in record, "syncs": counts["current"]})
    counts["current"] = []


out = Path(sys.argv[1])
train, val = load({"dataset": "digits"})
config = GPTConfig(vocab_size=train.vocab_size, seq_len=48, n_layer=2, d_model=32, n_head=2)
torch.manual_seed(3)
model = GPT(config)
ds = {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 2, "gradient_clipping": 1.0, "steps_per_print": 10**9}
trainer = Trainer(
    model, ds, PackedRows(train, 48), val_data=PackedRows(val, 48), out_dir=out, collate_fn=collate, flops_per_token=config.flops_per_token(),
    monitor={"csv_monitor": {"enabled": True, "job_name": "csv"}},
    steps=10, log_interval=4, eval_interval=8, eval_batches=1, noise_scale_interval=5, checkpoint_interval=5, warmup_steps=2, lr=3e-3,
)
rank = int(os.environ["RANK"])
trainer.fit(callback=close_step)
if rank == 0:
    (out / "syncs.json").write_text(json.dumps(counts["step"]))
