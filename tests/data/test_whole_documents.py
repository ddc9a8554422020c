"""Whole-document packing ("packing": "documents"): every document once, whole, in one row, checked
against a construction written separately; a GPT's loss on such rows is the per-document losses'."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from fastscale.data import IGNORE_INDEX, MemoryShard, PackedRows, collate, write_shard
from fastscale.data.packing import WholeDocumentRows, has_rows, pack_rows
from fastscale.model import GPT, GPTConfig
from fastscale.train import ConfigError
from fastscale.train.config import RunConfig
from fastscale.train.launch import build_run


def random_documents(seed, n_docs, max_len):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 50, size=int(rng.integers(1, max_len + 1))) for _ in range(n_docs)]


def expected_rows(docs, seq_len):
    """Rows built the plain way: fill a list until the next document would overflow it, then pad."""
    rows, current = [], []

    def flush():
        idx, targets, positions, seg_lens = [], [], [], []
        for d in current:
            idx += list(d)
            targets += list(d[1:]) + [IGNORE_INDEX]
            positions += list(range(len(d)))
            seg_lens.append(len(d))
        pad = seq_len - len(idx)
        if pad:
            idx += [0] * pad
            targets += [IGNORE_INDEX] * pad
            positions += list(range(pad))
            seg_lens.append(pad)
        rows.append({"idx": idx, "targets": targets, "positions": positions, "seg_lens": seg_lens, "docs": list(current)})

    for d in docs:
        if sum(map(len, current)) + len(d) > seq_len:
            flush()
            current = []
        current.append(d)
    flush()
    return rows


@pytest.mark.parametrize("seed, seq_len, max_len", [(0, 16, 16), (1, 7, 3), (2, 40, 40), (3, 1, 1)])
def test_rows_match_an_independent_construction(tmp_path, seed, seq_len, max_len):
    docs = random_documents(seed, 60, max_len)
    shard = write_shard(tmp_path / "s", docs, vocab_size=50)  # memory-mapped uint16, as in training
    rows = WholeDocumentRows(shard, seq_len)
    expected = expected_rows(docs, seq_len)
    assert len(rows) == len(expected)
    order = np.random.default_rng(seed).permutation(len(rows))  # random access: any order, same rows
    for r in order:
        row, want = rows[int(r)], expected[r]
        for key in ("idx", "targets", "positions"):
            assert row[key].dtype == np.int64 and row[key].shape == (seq_len,)
            np.testing.assert_array_equal(row[key], want[key], err_msg=f"row {r} {key}")
        assert row["seg_lens"] == want["seg_lens"] and all(type(n) is int for n in row["seg_lens"])


def test_every_document_appears_exactly_once_whole():
    lengths = np.random.default_rng(4).integers(1, 21, size=80)
    # token = (document + 1) * 1000 + index in the document: each token says where it came from
    docs = [(i + 1) * 1000 + np.arange(n) for i, n in enumerate(lengths)]
    rows = WholeDocumentRows(MemoryShard(docs, vocab_size=10**6), 24)
    per_row = []
    for r in range(len(rows)):
        row = rows[r]
        bounds = np.cumsum([0] + row["seg_lens"])
        assert bounds[-1] == 24
        per_row.append([])
        for s, e in zip(bounds[:-1], bounds[1:]):
            tokens, targets = row["idx"][s:e], row["targets"][s:e]
            if tokens[0] == 0:  # padding: one segment at the row's end, nothing to predict
                assert e == 24 and (tokens == 0).all() and (targets == IGNORE_INDEX).all()
                continue
            doc = int(tokens[0]) // 1000 - 1
            np.testing.assert_array_equal(tokens, docs[doc])  # whole, from its first token
            np.testing.assert_array_equal(targets, np.append(docs[doc][1:], IGNORE_INDEX))
            per_row[-1].append(doc)
    assert [d for ds in per_row for d in ds] == list(range(len(docs)))  # each once, in order
    for here, after in zip(per_row[:-1], per_row[1:]):  # greedy: the next row's first document did not fit here
        assert sum(lengths[here]) + lengths[after[0]] > 24


def test_packing_documents_refuses_what_it_cannot_keep_whole():
    docs = random_documents(5, 10, 8)
    docs[6] = np.arange(13)
    with pytest.raises(ValueError, match=r"document 6 of shard .* has 13 tokens, more than seq_len=12.*packing='stream'"):
        WholeDocumentRows(MemoryShard(docs, vocab_size=50), 12)
    docs[6] = np.zeros(0, dtype=np.int64)
    with pytest.raises(ValueError, match=r"document 6 .* is empty"):
        WholeDocumentRows(MemoryShard(docs, vocab_size=50), 12)
    with pytest.raises(ValueError, match=r"no documents"):
        WholeDocumentRows(MemoryShard([], vocab_size=50), 12)
    with pytest.raises(ValueError, match=r"packing='rows'; expected one of \('stream', 'documents'\)"):
        pack_rows(MemoryShard(docs[:2], vocab_size=50), 12, "rows")


def test_held_out_rows_exist_for_any_documents_under_documents_packing():
    small = MemoryShard([np.arange(3)], vocab_size=50)
    assert has_rows(small, 8, "documents") and not has_rows(small, 8, "stream")
    assert not has_rows(MemoryShard([], vocab_size=50), 8, "documents")


def per_document_loss_sum(model, docs):
    """Sum over documents of the model's NLL of each, one document at a time, no packing, float64."""
    total = 0.0
    for d in docs:
        if len(d) < 2:
            continue
        x = torch.from_numpy(np.asarray(d, dtype=np.int64))[None]
        logits = model(x[:, :-1])
        total += F.cross_entropy(logits[0].double(), x[0, 1:], reduction="sum").item()
    return total


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_gpt_loss_on_whole_document_rows_is_the_per_document_loss(positions):
    torch.manual_seed(0)
    seq_len = 20
    docs = random_documents(6, 12, seq_len)
    config = GPTConfig(vocab_size=50, seq_len=seq_len, n_layer=2, d_model=16, n_head=2, positions=positions, attention_backend="torch", loss_backend="torch")
    model = GPT(config).double().eval()
    rows = WholeDocumentRows(MemoryShard(docs, vocab_size=50), seq_len)
    batch = collate([rows[r] for r in range(len(rows))])
    n_targets = int((batch["targets"] != IGNORE_INDEX).sum())
    assert n_targets == sum(len(d) - 1 for d in docs)
    with torch.no_grad():
        mean = model(batch["idx"], batch["targets"], cu_seqlens=batch["cu_seqlens"], max_seqlen=batch["max_seqlen"], positions=batch["positions"])
        reference = per_document_loss_sum(model, docs) / n_targets
    assert mean.dtype == torch.float64
    assert abs(mean.item() - reference) <= 1e-10 * abs(reference)


GOOD = {"model": {"n_layer": 1, "d_model": 32, "n_head": 2}, "data": {"dataset": "captions"}, "seq_len": 227}
DS = {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 2}


def test_run_config_packing_key(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # build_run only: nothing starts
    assert RunConfig.from_dict(GOOD).packing == "stream"
    with pytest.raises(ConfigError, match=r"packing='whole'; expected one of \('stream', 'documents'\)"):
        RunConfig.from_dict({**GOOD, "packing": "whole"})
    trainer = build_run({**GOOD, "packing": "documents"}, DS, tmp_path)
    assert isinstance(trainer.train_data, WholeDocumentRows) and isinstance(trainer.val_data, WholeDocumentRows)
    assert trainer.run_info["run"]["packing"] == "documents"
    stream = build_run(GOOD, DS, tmp_path)
    assert type(stream.train_data) is PackedRows
    with pytest.raises(ConfigError, match=r"seq_len=200, packing='documents': .* more than seq_len=200"):
        build_run({**GOOD, "seq_len": 200, "packing": "documents"}, DS, tmp_path)
