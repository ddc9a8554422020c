"""attn_implementation="fastscale" against transformers' own eager and SDPA attention on tiny random
models: logits and every parameter gradient, on full batches, sliding windows, packed documents
(position_ids and DataCollatorWithFlattening) and the fallbacks (padding, softcap, dropout)."""

import logging

import pytest
import torch

pytest.importorskip("transformers")

from hf_models import KINDS, VOCAB, assert_close, assert_same_gradients, config, model_pair  # noqa: E402

import fastscale.integrations.transformers as integration  # noqa: E402
from fastscale.integrations.transformers import attention as hf_attention  # noqa: E402


@pytest.fixture
def kernel_calls(monkeypatch):
    """Every call that reaches fastscale.ops.attention, with its keyword arguments."""
    calls = []
    real = hf_attention.fused_attention

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(hf_attention, "fused_attention", spy)
    return calls


def _references(kind):
    return ("eager",) if kind == "gemma2" else ("eager", "sdpa")  # Gemma 2 declares no SDPA support


def _train_step(model, input_ids, **kwargs):
    model.train()
    model.zero_grad()
    out = model(input_ids, labels=input_ids, **kwargs)
    out.loss.backward()
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_logits_and_gradients_equal_stock(kind, kernel_calls):
    input_ids = torch.randint(0, VOCAB, (2, 11))
    for reference in _references(kind):
        ref, fast = model_pair(config(kind), reference)
        expected, got = _train_step(ref, input_ids), _train_step(fast, input_ids)
        assert_close(got.logits, expected.logits)
        assert_close(got.loss, expected.loss)
        assert_same_gradients(ref, fast)
    assert len(kernel_calls) == 2 * len(_references(kind))  # both layers on the kernel, for each reference
    windows = {call["window"] for call in kernel_calls}
    assert windows == ({None} if kind in ("llama", "gpt2") else {None, 3} if kind != "mistral" else {3})


def test_sliding_window_changes_the_answer():
    """The window test above can fail: the same Mistral without its window gives other logits."""
    input_ids = torch.randint(0, VOCAB, (1, 11))
    windowed, _ = model_pair(config("mistral"), "eager")
    unwindowed, _ = model_pair(config("mistral", sliding_window=None), "eager")
    unwindowed.load_state_dict(windowed.state_dict())
    assert (windowed(input_ids).logits - unwindowed(input_ids).logits).abs().max() > 1e-2


def _documents(lengths):
    return [torch.randint(0, VOCAB, (n,)) for n in lengths]


def _per_document(model, documents, weights):
    """sum over documents of <logits, weights>, each document alone in a batch of one."""
    total, start = 0.0, 0
    for doc in documents:
        total = total + (model(doc[None]).logits[0] * weights[start:start + len(doc)]).sum()
        start += len(doc)
    return total


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_packed_documents_equal_each_document_alone(kind, kernel_calls):
    """One row of documents 4, 6 and 3 tokens long (longer than the window of 3), position_ids
    restarting at 0: logits and gradients equal those of each document run on its own."""
    documents = _documents([4, 6, 3])
    ref, fast = model_pair(config(kind), "eager")
    weights = torch.randn(sum(map(len, documents)), VOCAB)
    expected = _per_document(ref.train(), documents, weights)
    expected.backward()
    position_ids = torch.cat([torch.arange(len(d)) for d in documents])[None]
    got = (fast.train()(torch.cat(documents)[None], position_ids=position_ids).logits[0] * weights).sum()
    got.backward()
    assert_close(got, expected)
    assert_same_gradients(ref, fast)
    assert len(kernel_calls) == 2 and all(call["cu_seqlens"].tolist() == [0, 4, 10, 13] for call in kernel_calls)


def test_packed_rows_of_a_batch():
    """Two rows, each packing its own documents: no token sees another document or row."""
    rows = [[5, 6], [3, 8]]
    docs = [_documents(row) for row in rows]
    ref, fast = model_pair(config("mistral"), "eager")
    input_ids = torch.stack([torch.cat(row) for row in docs])
    position_ids = torch.stack([torch.cat([torch.arange(len(d)) for d in row]) for row in docs])
    logits = fast(input_ids, position_ids=position_ids).logits
    for r, row in enumerate(docs):
        start = 0
        for doc in row:
            assert_close(logits[r, start:start + len(doc)], ref(doc[None]).logits[0])
            start += len(doc)


@pytest.mark.parametrize("flash_kwargs", [False, True])
def test_data_collator_with_flattening(flash_kwargs, kernel_calls):
    """A batch from transformers' DataCollatorWithFlattening (position_ids, or also its precomputed
    cu_seq_lens_q / max_length_q): the loss equals the stock model's on the same packed batch
    through per-document runs, i.e. the sum of per-document token losses over all targets."""
    from transformers import DataCollatorWithFlattening

    documents = _documents([5, 2, 7])
    collator = DataCollatorWithFlattening(return_flash_attn_kwargs=flash_kwargs, return_tensors="pt")
    batch = collator([{"input_ids": d.tolist()} for d in documents])
    ref, fast = model_pair(config("qwen2"), "eager")
    got = fast(**batch)
    expected_sum, targets = 0.0, 0
    for doc in documents:
        out = ref(doc[None], labels=doc[None])
        expected_sum = expected_sum + out.loss * (len(doc) - 1)
        targets += len(doc) - 1
    assert_close(got.loss, expected_sum / targets)
    assert kernel_calls and all(call["cu_seqlens"].tolist() == [0, 5, 7, 14] for call in kernel_calls)


def _padding(batch, length, side):
    """A [batch, length] mask: row 0 whole, row 1 with 4 padded positions on `side`."""
    mask = torch.ones(batch, length, dtype=torch.long)
    if side == "left":
        mask[1, :4] = 0
    elif side == "right":
        mask[1, -4:] = 0
    else:  # scattered
        mask[1, 2:4] = 0
    return mask


@pytest.mark.parametrize("kind", ["llama", "mistral", "gemma2", "gpt2"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_on_the_kernel_equals_stock(kind, side, kernel_calls):
    """Left or right padding: the kernel on the real tokens only; the real tokens' logits, the loss
    and every gradient equal stock SDPA's (eager for Gemma 2). Labels are -100 on padding and where
    a padded position would predict (the first real token after left padding): what a padded query
    attends to is not defined (0 here and in SDPA, an average in eager)."""
    input_ids = torch.randint(0, VOCAB, (2, 11))
    mask = _padding(2, 11, side)
    after_padding = torch.nn.functional.pad(mask, (1, 0), value=1)[:, :-1] == 0
    labels = input_ids.masked_fill((mask == 0) | after_padding, -100)
    ref, fast = model_pair(config(kind), _references(kind)[-1])
    expected, got = (m.train()(input_ids, attention_mask=mask, labels=labels) for m in (ref, fast))
    expected.loss.backward()
    got.loss.backward()
    real = mask.bool()
    assert_close(got.logits[real], expected.logits[real])
    assert_close(got.loss, expected.loss)
    assert_same_gradients(ref, fast)
    assert kernel_calls and all(call["cu_seqlens"].tolist() == [0, 11, 18] for call in kernel_calls)


def test_padding_inside_a_row_falls_back_to_sdpa_with_the_stock_mask(kernel_calls, caplog):
    """Padding inside a row: the stock mask through SDPA, equal to eager on every real token; the
    fallback is logged once."""
    hf_attention._warned.clear()
    input_ids = torch.randint(0, VOCAB, (2, 9))
    mask = _padding(2, 9, "inside")
    ref, fast = model_pair(config("mistral"), "eager")
    with caplog.at_level(logging.WARNING, logger=hf_attention.__name__):
        got = fast(input_ids, attention_mask=mask).logits
        fast(input_ids, attention_mask=mask)
    assert_close(got[mask.bool()], ref(input_ids, attention_mask=mask).logits[mask.bool()])
    assert not kernel_calls
    assert [r.message for r in caplog.records] == [
        "fastscale attention falls back for a KV cache, padding in the middle of a row or a custom mask pattern: "
        "SDPA with transformers' mask"
    ]


def test_all_ones_mask_uses_the_kernel(kernel_calls):
    input_ids = torch.randint(0, VOCAB, (2, 9))
    ref, fast = model_pair(config("llama"), "sdpa")
    mask = torch.ones(2, 9, dtype=torch.long)
    assert_close(fast(input_ids, attention_mask=mask).logits, ref(input_ids).logits)
    assert len(kernel_calls) == 2


@pytest.mark.parametrize("batch", ["full", "packed", "padded"])
def test_gemma2_softcap_falls_back_to_eager(batch, kernel_calls):
    """Softcapped attention scores: the model's eager attention with the causal, window, document
    and padding mask the kernel would have applied; equal to stock eager (per document when packed,
    on the real tokens when padded)."""
    cfg = config("gemma2", attn_logit_softcapping=2.0)
    ref, fast = model_pair(cfg, "eager")
    if batch == "padded":
        input_ids, mask = torch.randint(0, VOCAB, (2, 11)), _padding(2, 11, "left")
        real = mask.bool()
        got, expected = (m(input_ids, attention_mask=mask).logits[real] for m in (fast, ref))
        assert_close(got, expected)
    elif batch == "packed":
        documents = _documents([4, 6])
        weights = torch.randn(10, VOCAB)
        expected = _per_document(ref, documents, weights)
        position_ids = torch.cat([torch.arange(len(d)) for d in documents])[None]
        got = (fast(torch.cat(documents)[None], position_ids=position_ids).logits[0] * weights).sum()
        assert_close(got, expected)
    else:
        input_ids = torch.randint(0, VOCAB, (2, 11))
        expected, got = _train_step(ref, input_ids), _train_step(fast, input_ids)
        assert_close(got.logits, expected.logits)
        assert_same_gradients(ref, fast)
    assert not kernel_calls


def test_softcap_changes_the_answer():
    """The softcap fallback test can fail: without the cap Gemma 2 gives other logits."""
    input_ids = torch.randint(0, VOCAB, (1, 11))
    capped, _ = model_pair(config("gemma2", attn_logit_softcapping=0.5), "eager")
    uncapped, _ = model_pair(config("gemma2"), "eager")
    uncapped.load_state_dict(capped.state_dict())
    assert (capped(input_ids).logits - uncapped(input_ids).logits).abs().max() > 1e-2


def test_dropout_in_training_falls_back_and_in_eval_does_not(kernel_calls):
    cfg = config("llama", attention_dropout=0.5)
    _, fast = model_pair(cfg, "eager")
    input_ids = torch.randint(0, VOCAB, (2, 7))
    fast.train()(input_ids)
    assert not kernel_calls
    fast.eval()(input_ids)
    assert len(kernel_calls) == 2


def test_output_attentions_falls_back_to_eager(kernel_calls):
    input_ids = torch.randint(0, VOCAB, (2, 7))
    ref, fast = model_pair(config("llama"), "eager")
    got, expected = fast(input_ids, output_attentions=True), ref(input_ids, output_attentions=True)
    assert not kernel_calls
    for a, b in zip(got.attentions, expected.attentions):
        assert_close(a, b)


def test_generation_equals_stock(kernel_calls):
    """Greedy decoding with a KV cache: the prefill on the kernel, the decode steps on SDPA."""
    input_ids = torch.randint(0, VOCAB, (1, 6))
    ref, fast = model_pair(config("mistral"), "eager")
    options = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert fast.generate(input_ids, **options).tolist() == ref.generate(input_ids, **options).tolist()
    assert len(kernel_calls) == 2


def test_registered_under_its_name():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    integration.register()
    assert AttentionInterface._global_mapping["fastscale"] is integration.fastscale_attention_forward
    assert AttentionMaskInterface._global_mapping["fastscale"] is integration.fastscale_mask


def test_mismatched_flash_kwargs_are_refused():
    q = torch.randn(1, 4, 6, 8)
    kv = torch.randn(1, 2, 6, 8)
    offsets = torch.tensor([0, 2, 6], dtype=torch.int32)
    module = torch.nn.Module()
    with pytest.raises(ValueError, match="cu_seq_lens_k differs from cu_seq_lens_q"):
        integration.fastscale_attention_forward(module, q, kv, kv, None, cu_seq_lens_q=offsets, max_length_q=4,
                                                cu_seq_lens_k=torch.tensor([0, 3, 6], dtype=torch.int32))


def test_gradient_checkpointing_on_packed_documents(kernel_calls):
    """Recomputed layers in backward reuse the forward's document offsets and give stock gradients."""
    documents = _documents([5, 4])
    ref, fast = model_pair(config("llama"), "eager")
    for model in (ref, fast):
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()  # renamed in transformers 5.24, where the old name warns
    weights = torch.randn(9, VOCAB)
    expected = _per_document(ref.train(), documents, weights)
    expected.backward()
    position_ids = torch.cat([torch.arange(len(d)) for d in documents])[None]
    got = (fast.train()(torch.cat(documents)[None], position_ids=position_ids).logits[0] * weights).sum()
    got.backward()
    assert_close(got, expected)
    assert_same_gradients(ref, fast)
    assert len(kernel_calls) == 4 and all(call["cu_seqlens"].tolist() == [0, 5, 9] for call in kernel_calls)


def test_left_padded_generation_equals_stock(kernel_calls):
    """Batched greedy decoding of prompts of different lengths: the padded prefill on the kernel."""
    input_ids = torch.randint(1, VOCAB, (2, 7))
    mask = _padding(2, 7, "left")
    ref, fast = model_pair(config("qwen2"), "sdpa")
    options = dict(attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert fast.generate(input_ids, **options).tolist() == ref.generate(input_ids, **options).tolist()
    assert len(kernel_calls) == 2 and kernel_calls[0]["cu_seqlens"].tolist() == [0, 7, 10]
