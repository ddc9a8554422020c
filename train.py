"""Train a GPT of the fastscale family with DeepSpeed.

    deepspeed --num_gpus 2 train.py --config configs/tiny.json --deepspeed_config configs/ds/zero2.json --out runs/tiny
    python train.py --config configs/tiny.json --deepspeed_config configs/ds/zero0.json --out runs/tiny   # one process
    ... --resume                                                       # continue from the newest complete checkpoint

On a CPU, start two ranks with OMP_NUM_THREADS=1. See `python train.py --help`.
"""

import sys

from fastscale.extras import MissingExtraError, require

try:
    require("train", "train.py")
except MissingExtraError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)

# at module level, not under __main__: imported only there, a Ctrl-C printed a traceback from
# multiprocessing's resource sharer (the DataLoader workers' file-descriptor passing; test_launch_interrupt)
from fastscale.train.launch import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
