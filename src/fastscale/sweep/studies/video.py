"""The `video` study: the loss of each frame of a clip against N, frame 1 alone and every later frame given
the ones before it (Henighan et al. 2020, section on video): how much of a frame the model predicts from
the earlier frames, and how that share grows with N.

Data: fastscale.data "video" clips (bundled: a camera window panning across a sample photograph, or
`--input` folders of frames), F frames of r x r RGB, tokens BOS then the frames' pixels in time order
(VideoTokenizer), T = 3 r^2 tokens per frame.

evaluate: every held-out clip (the prepared val shard, or its first `max_clips`) is scored whole from its
BOS (fastscale.sweep.evaluation.token_losses: float64 losses, element t predicts token t + 1, so pixel j of
frame f, token 1 + f T + j, is element f T + j). Recorded: `position_loss`, the mean over clips of each of
the F T token positions (nats), and per frame position the mean over clips of the frame's summed loss
(nats per frame) with its standard error over clips. Frame 1 is predicted from BOS alone: it is the
8x8-image loss of the clips' frames; frame k > 1 has frames 1..k-1 in context.

report: runs of the same N (seeds) are averaged. Per N: each frame position's loss, the later frames'
mean, and the share of frame 1's loss the earlier frames remove, 1 - L(frame k) / L(frame 1). Per frame
position, L(N) = L_inf + (N0/N)^alpha in nats per frame (fastscale.sweep.studies._common.fit_loss_law:
bootstrap intervals, a pure power law with the reason when the full law cannot be fitted).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ._common import fit_loss_law, interval_text, is_int, require, runs_by_size

DOMAINS = ("video",)
OPTIONS = ("max_clips",)


def check(options: dict) -> None:
    unknown = sorted(set(options) - set(OPTIONS))
    require(not unknown, "options", unknown, f"only {list(OPTIONS)}")
    value = options.get("max_clips")
    require(value is None or (is_int(value) and value >= 1), "max_clips", value, "a positive integer (held-out clips scored per run) or no value (all)")


# -- evaluate (torch) --------------------------------------------------------------------------------


def held_out_clips(data_dir, max_clips: int | None) -> tuple[list[np.ndarray], int, int]:
    """(the val shard's clips as token arrays, frames per clip, tokens per frame)."""
    from fastscale.data import TokenShard

    shard = TokenShard(Path(data_dir) / "val")
    tokenizer = shard.meta.get("tokenizer", {})
    if tokenizer.get("name") != "video":
        raise ValueError(f"data_dir={str(data_dir)!r}: the video study needs video clips (fastscale data video); its tokenizer is {tokenizer!r}")
    if len(shard) == 0:
        raise ValueError(f"data_dir={str(data_dir)!r}: the val shard holds no clips to score")
    count = len(shard) if max_clips is None else min(max_clips, len(shard))
    tokens_per_frame = tokenizer["resolution"] ** 2 * tokenizer["channels"]
    return [np.asarray(shard[i]) for i in range(count)], int(tokenizer["frames"]), int(tokens_per_frame)


def evaluate(run_dir: Path, data_dir: Path, options: dict) -> dict:
    from fastscale.sweep.evaluation import load_trained

    clips, frames, tokens_per_frame = held_out_clips(data_dir, options.get("max_clips"))
    return measure(load_trained(run_dir), clips, frames, tokens_per_frame)


def measure(model, clips: list[np.ndarray], frames: int, tokens_per_frame: int) -> dict:
    """Each clip scored whole; per token position and per frame position, means over the clips."""
    from fastscale.sweep.evaluation import token_losses

    expected = 1 + frames * tokens_per_frame
    for i, clip in enumerate(clips):
        if len(clip) != expected:
            raise ValueError(f"clips[{i}]: {len(clip)} tokens; expected {expected} (BOS and {frames} frames of {tokens_per_frame})")
    losses = np.stack(token_losses(model, clips))  # [clips, frames * tokens_per_frame], float64
    per_frame = frame_losses(losses, frames, tokens_per_frame)
    se = per_frame.std(axis=0, ddof=1) / math.sqrt(len(clips)) if len(clips) > 1 else np.full(frames, np.nan)
    return {"clips": len(clips), "frames": frames, "tokens_per_frame": tokens_per_frame, "position_loss": losses.mean(axis=0).tolist(),
            "frame_loss": per_frame.mean(axis=0).tolist(), "frame_loss_se": se.tolist()}


def frame_losses(losses: np.ndarray, frames: int, tokens_per_frame: int) -> np.ndarray:
    """[clips, frames]: each frame's summed loss, from token_losses' [clips, frames * tokens_per_frame]."""
    return np.asarray(losses, dtype=np.float64).reshape(len(losses), frames, tokens_per_frame).sum(axis=-1)


# -- report (numpy, fastscale.fit) -------------------------------------------------------------------


def by_size(runs: list[dict]) -> list[dict]:
    """One row per N, smallest first: each frame position's loss averaged over the runs (seeds), the later
    frames' mean, and the share of frame 1's loss that the earlier frames remove."""
    rows = []
    for n, group in runs_by_size(runs):
        frame = np.mean([r["study"]["frame_loss"] for r in group], axis=0)
        se = np.sqrt(np.sum([np.square(r["study"]["frame_loss_se"]) for r in group], axis=0)) / len(group)
        rows.append({"N": n, "runs": [r["name"] for r in group], "frame_loss": frame.tolist(), "frame_loss_se": se.tolist(),
                     "later_frames": float(frame[1:].mean()) if len(frame) > 1 else None,
                     "predicted_share": (1 - frame[1:] / frame[0]).tolist()})
    return rows


def report(runs: list[dict], options: dict, n_bootstrap: int, seed: int) -> dict:
    first = runs[0]["study"]
    sizes = by_size(runs)
    n = np.array([s["N"] for s in sizes])
    fits = [fit_loss_law("video", n, [s["frame_loss"][k] for s in sizes], n_bootstrap, seed) for k in range(first["frames"])]
    later = fit_loss_law("video", n, [s["later_frames"] for s in sizes], n_bootstrap, seed) if first["frames"] > 1 else None
    return {"clips": first["clips"], "frames": first["frames"], "tokens_per_frame": first["tokens_per_frame"], "n_bootstrap": n_bootstrap,
            "sizes": sizes, "frame_fits": fits, "later_frames_fit": later}


def _fit_note(fit: dict) -> str:
    if "error" in fit:
        return f"no fit: {fit['error']}"
    return "; ".join(([fit["fallback"]] if "fallback" in fit else []) + fit["flags"]) or "none"


def _per_token(fit: dict, tokens_per_frame: int) -> str:
    if "params" not in fit:
        return "-"
    l_inf = fit["params"]["L_inf"] / tokens_per_frame
    if "L_inf" in fit.get("ci", {}):
        low, high = (v / tokens_per_frame for v in fit["ci"]["L_inf"])
        return f"{l_inf:.4g} [{low:.4g}, {high:.4g}]"
    return f"{l_inf:.4g}"


def markdown(section: dict) -> list[str]:
    lines = ["## Video: the loss of each frame given the earlier ones", ""]
    frames, t = section["frames"], section["tokens_per_frame"]
    lines += [f"Each of {section['clips']} held-out clips of {frames} frames ({t} tokens a frame) scored whole; losses in nats per frame "
              "(a frame's summed token losses), averaged over the clips and over the runs of one N (+- one standard error over the clips). "
              "Frame 1 has only BOS before it; frame k has frames 1..k-1 in context. 'predicted' is 1 - L(frame k) / L(frame 1): the share "
              "of a frame's loss that the earlier frames remove.", "", "![video: loss per frame position against N](video_frames.png)", "",
              "| N | " + " | ".join(f"frame {k + 1}" for k in range(frames)) + " | later frames | " + " | ".join(f"predicted {k + 2}" for k in range(frames - 1)) + " |",
              "|---|" + "---|" * (2 * frames)]
    for s in section["sizes"]:
        cells = [f"{v:.1f} +- {e:.1f}" for v, e in zip(s["frame_loss"], s["frame_loss_se"])]
        later = "-" if s["later_frames"] is None else f"{s['later_frames']:.1f}"
        lines.append(f"| {s['N']:.3g} | " + " | ".join(cells) + f" | {later} | " + " | ".join(f"{v:.1%}" for v in s["predicted_share"]) + " |")
    lines += ["", "L(N) = L_inf + (N0/N)^alpha per frame position (nats per frame; L_inf also per token):", "",
              "| frame | alpha | L_inf (nats/frame) | L_inf (nats/token) | N0 | notes |", "|---|---|---|---|---|---|"]
    named = [(f"{k + 1}", fit) for k, fit in enumerate(section["frame_fits"])]
    if section["later_frames_fit"] is not None:
        named.append(("later (mean of 2..)", section["later_frames_fit"]))
    for name, fit in named:
        lines.append(f"| {name} | {interval_text(fit, 'alpha')} | {interval_text(fit, 'L_inf')} | {_per_token(fit, t)} | "
                     f"{interval_text(fit, 'x0')} | {_fit_note(fit)} |")
    return lines + [""]


def plots(section: dict, out_dir: Path) -> list[str]:
    """video_frames.{png,svg}: each frame position's loss against N with its fitted law (left), and the
    share of frame 1's loss the earlier frames remove (right)."""
    from matplotlib.figure import Figure

    from fastscale.fit.plots import readable_log_ticks, save_figure

    figure = Figure(figsize=(11, 4.2), layout="constrained")
    left, right = figure.subplots(1, 2)
    n = np.array([s["N"] for s in section["sizes"]])
    for k, fit in enumerate(section["frame_fits"]):
        loss = np.array([s["frame_loss"][k] for s in section["sizes"]])
        left.scatter(n, loss, color=f"C{k}", s=16, zorder=3)
        label = f"frame {k + 1}" + (" (alone)" if k == 0 else " (given frame 1)" if k == 1 else f" (given frames 1-{k})")
        if "params" in fit and np.isfinite(list(fit["params"].values())).all():
            grid = np.geomspace(n.min(), n.max(), 100)
            p = fit["params"]
            left.plot(grid, p["L_inf"] + (p["x0"] / grid) ** p["alpha"], color=f"C{k}", lw=1.2, label=label)
        else:  # no fit, or a degenerate one: join the points
            left.plot(n, loss, ":", color=f"C{k}", lw=1, label=label + ", no fit drawn")
        if k:
            right.plot(n, [s["predicted_share"][k - 1] for s in section["sizes"]], "o-", color=f"C{k}", ms=4, label=label)
    left.set_xscale("log"), left.set_yscale("log"), right.set_xscale("log")
    left.set_ylabel("loss (nats/frame)"), right.set_ylabel("1 - L(frame k) / L(frame 1)")
    for ax in (left, right):
        ax.set_xlabel("N (non-embedding parameters)"), ax.grid(True, which="both", alpha=0.3), ax.legend(fontsize=7)
        readable_log_ticks(ax)
    names = []
    for suffix in (".png", ".svg"):
        save_figure(figure, Path(out_dir) / f"video_frames{suffix}")
        names.append(f"video_frames{suffix}")
    return names
