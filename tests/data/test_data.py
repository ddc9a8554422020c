"""Tokenizer round-trips, shard round-trips, packing boundaries and data order."""

import json

import numpy as np
import pytest

from fastscale.data import (
    IGNORE_INDEX,
    ByteTokenizer,
    ImageCaptionTokenizer,
    ImageTokenizer,
    MemoryShard,
    PackedRows,
    TokenShard,
    VideoTokenizer,
    build,
    collate,
    load,
    prepare,
    rows_for,
    write_shard,
)
from fastscale.data import sources


def test_image_tokenizer_round_trip_on_real_digits():
    tok = ImageTokenizer(8)
    images = [image for image, _ in sources.digits()][:50]
    for image in images:
        tokens = tok.encode(image)
        assert len(tokens) == 1 + 8 * 8 * 3 and tokens[0] == tok.bos and tokens[1:].max() < 256
        np.testing.assert_array_equal(tok.decode(tokens), image)
    # raster order, channel fastest: token 1 + 3 * (row * 8 + col) + channel
    image = images[7]
    assert tok.encode(image)[1 + 3 * (2 * 8 + 5) + 1] == image[2, 5, 1]


def test_photo_patches_are_real_and_varied():
    patches = np.stack(list(sources.photo_patches()))
    assert patches.shape == (1950, 8, 8, 3) and patches.dtype == np.uint8
    assert patches.std() > 20  # not constant: real photographs


def test_video_tokenizer_round_trip_and_time_order():
    tok = VideoTokenizer(frames=3)
    clip = next(sources.photo_pans(1, frames=3))
    tokens = tok.encode(clip)
    assert len(tokens) == 1 + 3 * 192
    np.testing.assert_array_equal(tok.decode(tokens), clip)
    np.testing.assert_array_equal(tokens[1 + 192 : 1 + 384], clip[1].reshape(-1))


@pytest.mark.parametrize("order", ["caption_first", "image_first"])
@pytest.mark.parametrize("caption", ["a handwritten seven", "", "déjà vu ✓"])
def test_image_caption_round_trip_both_orders(order, caption):
    tok = ImageCaptionTokenizer(8)
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    tokens = tok.encode(image, caption, order)
    assert tokens.max() < tok.vocab_size and (tokens == tok.sep).sum() == 1
    decoded_image, decoded_caption, decoded_order = tok.decode(tokens)
    np.testing.assert_array_equal(decoded_image, image)
    assert (decoded_caption, decoded_order) == (caption, order)


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    for text in ["12+34=46\n", "", "ünïcödé and \x00 bytes"]:
        assert tok.decode(tok.encode(text)) == text


def test_math_problems_are_correct_and_leveled():
    problems = list(sources.math_problems(300, (1, 4), seed=3))
    for text, level in problems:
        left, right = text.strip().split("=")
        assert eval(left) == int(right)
        assert max(len(n) for n in left.replace("*", "+").replace("-", "+").split("+")) <= level
    assert {level for _, level in problems} == {1, 2, 3, 4}
    with pytest.raises(ValueError, match="difficulty"):
        list(sources.math_problems(1, (3, 1)))


def test_shard_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    docs = [rng.integers(0, 70000, size=n) for n in (5, 1, 17, 300)]
    shard = write_shard(tmp_path / "s", docs, vocab_size=70000, note="x")
    assert shard.meta["dtype"] == "uint32" and isinstance(shard.tokens, np.memmap)
    again = TokenShard(tmp_path / "s")
    assert len(again) == 4 and again.n_tokens == 323 and again.meta["note"] == "x"
    for i, doc in enumerate(docs):
        np.testing.assert_array_equal(again[i], doc)
    small = write_shard(tmp_path / "t", [np.array([1, 2, 3])], vocab_size=257)
    assert small.meta["dtype"] == "uint16"
    assert not list(tmp_path.glob(".*"))  # no temporary directories left behind


def test_shard_rejects_bad_tokens_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="outside"):
        write_shard(tmp_path / "s", [np.array([0, 300])], vocab_size=257)
    assert not (tmp_path / "s").exists()
    with pytest.raises(FileNotFoundError, match="missing"):
        TokenShard(tmp_path)


def packed_documents(seed=0, n_docs=40):
    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, 50, size=int(rng.integers(1, 30))) for _ in range(n_docs)]
    return docs, MemoryShard(docs, vocab_size=50)


def test_packing_never_crosses_a_boundary():
    docs, shard = packed_documents()
    # label every token by (document, index in document)
    doc_of = np.concatenate([np.full(len(d), i) for i, d in enumerate(docs)])
    at = np.concatenate([np.arange(len(d)) for d in docs])
    rows = PackedRows(shard, seq_len=16)
    assert len(rows) == shard.n_tokens // 16
    n_targets = 0
    for r in range(len(rows)):
        row = rows.row(r)
        start = r * 16
        assert sum(row["seg_lens"]) == 16
        np.testing.assert_array_equal(row["idx"], shard.tokens[start : start + 16])
        bounds = np.cumsum([0] + row["seg_lens"])
        for s, e in zip(bounds[:-1], bounds[1:]):
            assert len(set(doc_of[start + s : start + e])) == 1  # one document per segment
            np.testing.assert_array_equal(row["positions"][s:e], np.arange(e - s))
        for t in range(16):
            p = start + t
            same_doc_next = p + 1 < len(doc_of) and doc_of[p + 1] == doc_of[p]
            if same_doc_next:
                assert row["targets"][t] == docs[doc_of[p]][at[p] + 1]
                n_targets += 1
            else:
                assert row["targets"][t] == IGNORE_INDEX
        # segments start exactly where a document starts (or at the row start)
        for s in bounds[1:-1]:
            assert at[start + s] == 0
    assert n_targets > 0


def test_collate_cu_seqlens_cover_the_flattened_batch():
    _, shard = packed_documents(1)
    rows = PackedRows(shard, seq_len=12)
    batch = collate([rows.row(0), rows.row(3)])
    cu = batch["cu_seqlens"].numpy()
    assert cu.dtype == np.int32 and cu[0] == 0 and cu[-1] == 24 and np.all(np.diff(cu) > 0)
    assert 12 in cu  # the row boundary is a segment boundary
    assert batch["idx"].shape == batch["targets"].shape == batch["positions"].shape == (2, 12)
    assert batch["max_seqlen"] == int(np.diff(cu).max())


def test_data_order_is_a_pure_function_of_seed_and_sample_index():
    full = rows_for(10, seed=4, first=0, count=35)
    for epoch in range(3):
        assert sorted(full[epoch * 10 : epoch * 10 + 10]) == list(range(10))  # each epoch a permutation
    np.testing.assert_array_equal(rows_for(10, seed=4, first=17, count=9), full[17:26])
    assert not np.array_equal(full[:10], full[10:20])
    assert not np.array_equal(rows_for(10, seed=5, first=0, count=10), full[:10])


def test_prepare_writes_train_and_val(tmp_path):
    meta = prepare("math", tmp_path / "math", count=200, difficulty=(1, 2), eval_difficulty=4, seed=0)
    assert meta["train"]["n_docs"] == 200 and meta["val"]["n_docs"] == 20
    train, val = load({"path": str(tmp_path / "math")})
    tok = ByteTokenizer()
    assert all(max(len(n) for n in tok.decode(val[i]).split("=")[0].replace("*", "+").replace("-", "+").split("+")) <= 4 for i in range(20))
    assert json.loads((tmp_path / "math" / "val" / "meta.json").read_text())["eval_difficulty"] == 4


def test_prepare_user_folders(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"caption {i}")
    tok, train, val, _ = build("captions", input=str(folder), order="image_first", val_fraction=0.25)
    assert len(train) == 3 and len(val) == 1
    assert ImageCaptionTokenizer().decode(val[0])[1].startswith("caption ")
    text = tmp_path / "t.txt"
    lines = [f"line {i:03d}\n" for i in range(100)]  # distinct: repeated documents are removed
    text.write_text("".join(lines))
    _, train, val, _ = build("text", input=str(text), doc_bytes=100, val_fraction=0)
    assert all(len(d) <= 101 for d in train)
    assert b"".join(sorted(bytes(d[1:].astype(np.uint8)) for d in train)) == "".join(lines).encode()


def test_bad_data_options_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="domain='audio'"):
        build("audio")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build("text", input=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build("images", input=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="data.path"):
        load({"path": str(tmp_path / "nope")})
    with pytest.raises(ValueError, match="either 'path'"):
        load({})
