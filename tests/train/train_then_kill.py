"""train.py for the kill-and-resume test: the same run (launch.build_run), with rank 0 killed (SIGKILL)
by the Trainer's callback right after step K's record, before that step's checkpoint.

    python -m deepspeed.launcher.runner --num_gpus 2 train_then_kill.py --kill-after K --config RUN.json --deepspeed_config DS.json --out DIR
"""

import argparse
import os
import signal

from fastscale.train.launch import build_run, parser


def main() -> None:
    fault = argparse.ArgumentParser()
    fault.add_argument("--kill-after", type=int, required=True)
    known, rest = fault.parse_known_args()  # the launcher puts --local_rank anywhere among the arguments
    kill_at = known.kill_after
    args = parser().parse_args(rest)
    trainer = build_run(args.config, args.deepspeed_config, args.out)

    def kill_after(record: dict) -> None:
        if record["step"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    trainer.fit(resume=args.resume, callback=kill_after)


if __name__ == "__main__":
    main()
