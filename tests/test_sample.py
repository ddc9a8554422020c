"""`fastscale sample`: a really trained tiny run (3x3 digits, 3 steps, ~10 s) sampled through the command.
Greedy samples (top-k 1) against an independent float64 greedy decode of the same weights; stochastic
ones against generate under the same seed; images read back from the PNG grid pixel for pixel; text
decoded with the run's own tokenizer and cut where the model starts a new document."""

import argparse
import io
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from fastscale import sample
from fastscale.data.tokenizers import ByteTokenizer, ImageCaptionTokenizer, VideoTokenizer
from fastscale.sweep.evaluation import load_trained
import processes

RUN = {"model": {"n_layer": 1, "d_model": 16, "n_head": 2}, "data": {"dataset": "digits", "resolution": 3}, "seq_len": 28,
       "train": {"steps": 3, "lr": 3e-3, "warmup_steps": 1, "eval_interval": 0, "checkpoint_interval": 3, "noise_scale_interval": 0}}
BOS = 256  # of the image and the byte tokenizers alike (both 257 tokens)
PIXELS = 27  # 3 x 3 x 3 tokens per image after BOS


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    # its own 3x3 run: on the session's 8x8 digits run a greedy float64 decode is 192 full forward passes
    deepspeed = {"train_batch_size": 2, "train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 0}, "steps_per_print": 10**9}
    return processes.train(tmp_path_factory.mktemp("sample"), RUN, deepspeed)


@pytest.fixture(scope="module")
def text_run(image_run, tmp_path_factory):
    """The same weights recorded as a byte-level text run (same vocabulary size and BOS)."""
    out = tmp_path_factory.mktemp("text") / "run"
    shutil.copytree(image_run, out)
    config = json.loads((out / "config.json").read_text())
    config["data"]["train"]["tokenizer"] = config["data"]["val"]["tokenizer"] = {"name": "bytes"}
    (out / "config.json").write_text(json.dumps(config))
    return out


def command(*argv):
    parser = argparse.ArgumentParser()
    sample.add_arguments(parser)
    return sample.run(parser.parse_args([str(a) for a in argv]))


def greedy_float64(run_dir, start, steps):
    """Argmax decoding of the run's weights in float64, one full forward pass per token."""
    model = load_trained(run_dir).double()
    idx = torch.tensor([start])
    with torch.no_grad():
        for _ in range(steps):
            idx = torch.cat([idx, model(idx)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx[0].numpy()


def tiles(path, n, scale, columns, shape=(3, 3, 3), gap=2):
    grid = np.asarray(Image.open(path))
    h, w = shape[0] * scale, shape[1] * scale
    rows = -(-n // columns)
    assert grid.shape == (rows * (h + gap) + gap, columns * (w + gap) + gap, 3)
    return [grid[gap + (i // columns) * (h + gap):][:h, gap + (i % columns) * (w + gap):][:, :w] for i in range(n)]


@pytest.mark.slow
def test_greedy_images_match_a_float64_greedy_decode_pixel_for_pixel(image_run, tmp_path, capsys):
    out = tmp_path / "grid.png"
    out.write_bytes(b"poison")
    assert command(image_run, "--n", 3, "--top-k", 1, "--scale", 2, "--out", out) == 0
    expected = greedy_float64(image_run, [BOS], PIXELS)[1:].reshape(3, 3, 3).astype(np.uint8).repeat(2, 0).repeat(2, 1)
    for tile in tiles(out, 3, 2, columns=2):
        np.testing.assert_array_equal(tile, expected)
    assert f"3 sample(s) from {image_run / 'checkpoints' / 'step00000003'} " in capsys.readouterr().out


@pytest.mark.slow
def test_sampled_images_are_the_seeded_generate_draws_in_grid_order(image_run, tmp_path):
    out = tmp_path / "grid.png"
    assert command(image_run, "--n", 5, "--seed", 11, "--temperature", 0.7, "--out", out) == 0
    model = load_trained(image_run)
    torch.manual_seed(11)
    with torch.no_grad():
        rows = model.generate(torch.full((5, 1), BOS), PIXELS, temperature=0.7).numpy()
    images = [np.where(r[1:] > 255, 0, r[1:]).astype(np.uint8).reshape(3, 3, 3).repeat(8, 0).repeat(8, 1) for r in rows]
    for tile, image in zip(tiles(out, 5, 8, columns=3), images):
        np.testing.assert_array_equal(tile, image)
    assert len({r.tobytes() for r in rows}) == 5  # five different samples, not one repeated


@pytest.mark.slow
def test_same_seed_same_samples_and_the_callers_random_state_is_left_alone(image_run):
    model = load_trained(image_run)
    before = torch.random.get_rng_state()
    first = sample.draw(model, np.array([BOS]), n=2, max_new_tokens=20, seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)
    np.testing.assert_array_equal(first, sample.draw(model, np.array([BOS]), n=2, max_new_tokens=20, seed=5))
    assert not np.array_equal(first, sample.draw(model, np.array([BOS]), n=2, max_new_tokens=20, seed=6))


@pytest.mark.slow
def test_text_samples_continue_the_prompt_in_the_runs_tokenizer(text_run, tmp_path, capsys):
    out = tmp_path / "samples.txt"
    assert command(text_run, "--n", 2, "--prompt", "ab", "--tokens", 20, "--top-k", 1, "--out", out) == 0
    tokens = greedy_float64(text_run, [BOS, ord("a"), ord("b")], 20)
    ends = np.flatnonzero(tokens[3:] == BOS)
    tokens = tokens[: 3 + ends[0]] if len(ends) else tokens
    text = bytes(tokens[1:].astype(np.uint8).tolist()).decode("utf-8", errors="replace")
    assert text.startswith("ab") and len(tokens) > 3
    assert out.read_text(encoding="utf-8") == f"--- sample 0 ---\n{text}\n--- sample 1 ---\n{text}\n"
    assert out.read_text(encoding="utf-8") in capsys.readouterr().out


def test_a_text_sample_ends_where_the_model_begins_a_new_document():
    tokenizer = ByteTokenizer()
    rows = np.array([[BOS, 104, 105, BOS, 120], [BOS, 104, 105, 106, 107]])
    assert sample.decode(tokenizer, rows, 2) == ["hi", "hijk"]


def test_clips_are_grid_rows_of_frames_and_grey_images_have_one_channel():
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 256, (3, 4, 5, 1), dtype=np.uint8) for _ in range(2)]
    grid = sample.image_grid(clips, scale=1, gap=1)
    assert grid.shape == (2 * 5 + 1, 3 * 5 + 2, 1)
    np.testing.assert_array_equal(grid[6:10, 1:16], np.concatenate(list(clips[1]), axis=1))
    assert np.asarray(Image.open(io.BytesIO(sample.png_bytes(grid)))).shape == (11, 17)


@pytest.mark.slow
@pytest.mark.parametrize("argv, message", [
    (["--n", 0], "--n=0; expected a positive integer"),
    (["--top-k", 0], "--top-k=0; expected a positive integer"),
    (["--temperature", 0], "--temperature=0.0; expected a positive number"),
    (["--prompt", "a cat"], "prompt='a cat': this run models images, which are sampled whole from BOS"),
])
def test_bad_arguments_are_refused_naming_them(image_run, argv, message, capsys):
    assert command(image_run, *argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_a_run_without_a_checkpoint_is_refused(image_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(image_run, run_dir, ignore=shutil.ignore_patterns("checkpoints"))
    assert command(run_dir) == 2
    assert "no complete checkpoint under checkpoints/" in capsys.readouterr().err


def test_a_caption_prompt_is_written_as_the_captions_domain_writes_it_and_its_image_decoded():
    tokenizer = ImageCaptionTokenizer(resolution=2)
    prompt = sample.prompt_tokens(tokenizer, "a 7")
    image = np.random.default_rng(1).integers(0, 256, (2, 2, 3), dtype=np.uint8)
    np.testing.assert_array_equal(prompt, tokenizer.encode(image, "a 7", order="caption_first")[: len(prompt)])
    assert sample.new_tokens(tokenizer, 64, len(prompt), None) == 12
    rows = np.concatenate([prompt, image.reshape(-1)])[None]
    np.testing.assert_array_equal(sample.decode(tokenizer, rows, len(prompt))[0], image)
    with pytest.raises(ValueError, match="pass the caption as the prompt"):
        sample.prompt_tokens(tokenizer, None)


def test_a_clip_decodes_to_its_frames():
    tokenizer = VideoTokenizer(frames=2, resolution=2)
    clip = np.random.default_rng(2).integers(0, 256, (2, 2, 2, 3), dtype=np.uint8)
    assert sample.new_tokens(tokenizer, 64, 1, None) == 24
    np.testing.assert_array_equal(sample.decode(tokenizer, tokenizer.encode(clip)[None], 1)[0], clip)


@pytest.mark.slow
def test_fastscale_sample_is_a_command(image_run, capsys):
    from fastscale.cli import main

    assert main(["sample", str(image_run), "--n", "0"]) == 2
    assert "--n=0; expected a positive integer" in capsys.readouterr().err
