"""The GPT forward: packed rows behave exactly like separate documents, the loss is the mean over
predicted tokens, and the rotary / GQA / tied variants run and learn."""

import pytest
import torch
import torch.nn.functional as F

from fastscale.model import GPT, GPTConfig


def tiny(**options):
    return GPTConfig(vocab_size=29, seq_len=24, n_layer=2, d_model=32, n_head=4, **options)


@pytest.mark.parametrize("options", [dict(), dict(positions="rotary", n_kv_head=2, tie_embeddings=True)])
def test_packed_rows_equal_separate_documents(options):
    model = GPT(tiny(**options)).double()
    lengths = [5, 11, 8]  # one row of 24 tokens holding three documents
    docs = [torch.randint(0, 29, (n,)) for n in lengths]
    row = torch.cat(docs)[None]
    cu = torch.tensor([0, 5, 16, 24], dtype=torch.int32)
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    packed = model(row, cu_seqlens=cu, max_seqlen=11, positions=positions)
    for doc, s in zip(docs, cu[:-1].tolist()):
        alone = model(doc[None])
        torch.testing.assert_close(packed[0, s : s + len(doc)], alone[0], rtol=1e-10, atol=1e-10)


def test_loss_is_mean_cross_entropy_over_predicted_tokens():
    model = GPT(tiny()).double()
    idx = torch.randint(0, 29, (2, 24))
    targets = torch.randint(0, 29, (2, 24))
    targets[0, :7] = -100
    logits = model(idx)
    expected = F.cross_entropy(logits.reshape(-1, 29), targets.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(model(idx, targets), expected)


def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = GPT(tiny(positions="rotary", n_kv_head=1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    idx = torch.randint(0, 29, (4, 24))
    losses = []
    for _ in range(20):
        loss = model(idx[:, :-1], idx[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_too_long_input_is_refused():
    with pytest.raises(ValueError, match="exceeds config.seq_len=24"):
        GPT(tiny())(torch.zeros(1, 25, dtype=torch.long))
