"""Text with a learned vocabulary: byte-level BPE (Hugging Face tokenizers) trained on the training split or
loaded from a tokenizer.json, token ids stored in the smallest sufficient dtype, the standard-library corpus,
its deduplication and its split by document."""

import json

import numpy as np
import pytest

from fastscale.cli import main
from fastscale.data import TokenShard, build, prepare, tokenizer_from_dict, write_shard
from fastscale.data import sources
from fastscale.data.tokenizers import BPETokenizer

ALPHABET = list("abcdefghij klmnop\nqrstuvwxyz.,;:") + ["é", "ß", "中", "🙂", "\t", "\x00"]


def random_texts(rng, count, low=20, high=200):
    return ["".join(rng.choice(ALPHABET, size=int(rng.integers(low, high)))) for _ in range(count)]


def words_corpus(rng, count):
    """Texts of repeated words, so BPE has merges to learn."""
    words = ["".join(rng.choice(list("abcdefgh"), size=int(rng.integers(2, 7)))) for _ in range(40)]
    return [" ".join(rng.choice(words, size=int(rng.integers(10, 60)))) + "\n" for _ in range(count)]


def test_bpe_trains_and_round_trips_any_text(rng):
    corpus = words_corpus(rng, 200)
    tok = BPETokenizer.train(corpus, 400)
    assert 257 <= tok.vocab_size <= 400
    assert tok.bos == tok.tokenizer.token_to_id("<|endoftext|>")
    for text in random_texts(rng, 50) + corpus[:5]:  # unseen characters too: every byte is a base token
        ids = tok.encode(text)
        assert ids.dtype == np.int64 and ids[0] == tok.bos and (tok.bos not in ids[1:])
        assert ids.min() >= 0 and ids.max() < tok.vocab_size
        assert tok.decode(ids) == text
    # the merges compress the kind of text they were learned on
    assert sum(len(tok.encode(t)) - 1 for t in corpus) < 0.6 * sum(len(t.encode()) for t in corpus)


def test_bpe_refuses_bad_vocabularies_and_tokenizers(tmp_path):
    with pytest.raises(ValueError, match="vocab=100; expected an integer from 257"):
        BPETokenizer.train(["abc"], 100)
    with pytest.raises(ValueError, match="vocab=300000"):
        BPETokenizer.train(["abc"], 300_000)
    with pytest.raises(FileNotFoundError, match="tokenizer='.*nope.json' does not exist"):
        BPETokenizer.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a Hugging Face tokenizer.json"):
        BPETokenizer.load(bad)
    from tokenizers import Tokenizer, models

    no_bos = tmp_path / "no_bos.json"
    Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(no_bos))
    with pytest.raises(ValueError, match="defines none of the BOS tokens"):
        BPETokenizer.load(no_bos)


@pytest.mark.parametrize("vocab, dtype", [(65_536, np.uint16), (262_144, np.uint32)])
def test_token_ids_are_stored_in_the_smallest_sufficient_dtype(tmp_path, vocab, dtype, rng):
    docs = [rng.integers(0, vocab, size=int(rng.integers(1, 50))) for _ in range(20)]
    docs[3][0], docs[7][-1] = 0, vocab - 1  # both ends of the range
    shard = write_shard(tmp_path / "s", docs, vocab)
    assert shard.meta["dtype"] == np.dtype(dtype).name and np.dtype(shard.tokens.dtype) == dtype
    assert all(np.array_equal(shard[i], d) for i, d in enumerate(docs))
    with pytest.raises(ValueError, match=f"outside \\[0, {vocab}\\)"):
        write_shard(tmp_path / "t", [np.array([vocab])], vocab)


def _corpus_folder(tmp_path, rng, count=40, copies=3):
    folder = tmp_path / "corpus"
    folder.mkdir()
    texts = words_corpus(rng, count)
    for i, text in enumerate(texts):
        (folder / f"{i:03d}.txt").write_text(text, encoding="utf-8")
    for k in range(copies):  # exact repeats of earlier files: removed before the split
        (folder / f"dup{k}.txt").write_text(texts[k], encoding="utf-8")
    return folder, set(texts)


def test_prepare_bpe_trains_on_the_training_split_only_and_reloads(tmp_path, monkeypatch, rng):
    folder, distinct = _corpus_folder(tmp_path, rng)
    seen_by_training = []
    train = BPETokenizer.train.__func__

    def recording_train(cls, texts, vocab_size):
        texts = list(texts)
        seen_by_training.extend(texts)
        return train(cls, texts, vocab_size)

    monkeypatch.setattr(BPETokenizer, "train", classmethod(recording_train))
    out = tmp_path / "out"
    meta = prepare("text", out, input=str(folder), bpe=True, vocab=320, doc_bytes=0, val_fraction=0.25, seed=int(rng.integers(1000)))
    assert meta["train"]["duplicates_removed"] == 3 and meta["train"]["corpus_documents"] == len(distinct)
    info = meta["train"]["tokenizer"]
    assert info["name"] == "bpe" and info["file"] == "tokenizer.json" and info["vocab_size"] == meta["train"]["vocab_size"] <= 320
    tok = tokenizer_from_dict(info, root=out)
    splits = {split: [tok.decode(d) for d in TokenShard(out / split)] for split in ("train", "val")}
    assert len(splits["val"]) == round(0.25 * len(distinct))
    assert not set(splits["train"]) & set(splits["val"]) and set(splits["train"]) | set(splits["val"]) == distinct
    assert sorted(seen_by_training) == sorted(splits["train"])  # the held-out documents taught the merges nothing

    again = tmp_path / "again"  # --tokenizer: the same ids from the saved tokenizer.json
    prepare("text", again, input=str(folder), tokenizer=str(out / "tokenizer.json"), doc_bytes=0, val_fraction=0.25, seed=meta["train"]["seed"])
    for split in ("train", "val"):
        a, b = TokenShard(out / split), TokenShard(again / split)
        assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.offsets, b.offsets)
    assert json.loads((again / "train" / "meta.json").read_text())["tokenizer"]["sha256"] == info["sha256"]

    (out / "tokenizer.json").write_text(BPETokenizer.train(["other text entirely"], 300).tokenizer.to_str())
    with pytest.raises(ValueError, match="sha256 differs"):
        tokenizer_from_dict(info, root=out)
    with pytest.raises(ValueError, match="needs root"):
        tokenizer_from_dict(info)


def test_text_options_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="vocab=None; expected a vocabulary size"):
        build("text", input=str(tmp_path), bpe=True)
    with pytest.raises(ValueError, match="vocab=512; expected None without bpe=True"):
        build("text", input=str(tmp_path), vocab=512)
    with pytest.raises(ValueError, match="bpe=True; expected False"):
        build("math", bpe=True, vocab=512)


def test_standard_library_corpus_is_cut_losslessly_and_deduplicated(rng):
    files = sources.stdlib_files()
    assert len(files) > 100 and not any("test" in p.parts or "site-packages" in p.parts for p in files)
    for path in files[:: max(1, len(files) // 25)]:
        data = path.read_bytes()
        pieces = list(sources.cut_documents(data, 1000))
        assert b"".join(pieces) == data and all(0 < len(p) <= 1000 for p in pieces)
    topics = sources.pydoc_topics()
    assert len(topics) > 50 and all(topics)
    unique = [bytes(rng.integers(0, 256, size=int(rng.integers(1, 30)), dtype=np.uint8)) + bytes([i]) for i in range(50)]
    picks = rng.integers(0, 50, size=200)
    kept, removed = sources.deduplicate([unique[i] for i in picks])
    first = list(dict.fromkeys(int(i) for i in picks))
    assert kept == [unique[i] for i in first] and removed == 200 - len(first)
    info = sources.stdlib_corpus_info()
    assert info["corpus"] == "python-stdlib" and info["licence"].startswith("PSF-2.0")


def test_fastscale_data_text_bpe_command(tmp_path, capsys, rng):
    folder, _ = _corpus_folder(tmp_path, rng)
    out = tmp_path / "d"
    assert main(["data", "text", "--input", str(folder), "--out", str(out), "--bpe", "--vocab", "300", "--doc-bytes", "0"]) == 0
    printed = capsys.readouterr().out
    assert "tokenizer.json: byte-level BPE" in printed and (out / "tokenizer.json").is_file()
    assert TokenShard(out / "train").meta["tokenizer"]["name"] == "bpe"
    assert main(["data", "text", "--input", str(folder), "--out", str(tmp_path / "e"), "--vocab", "300"]) == 2
    assert "vocab=300; expected None without bpe=True" in capsys.readouterr().err
