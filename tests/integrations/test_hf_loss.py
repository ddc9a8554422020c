"""apply_fastscale(model) against the stock causal-LM loss of tiny random models: loss and every
parameter gradient (ignored labels, tied embeddings, Gemma 2's final softcap, gradient accumulation
with num_items_in_batch), logits only when asked, no [tokens, V] tensor in a training step, and
the refusal of architectures it does not support."""

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

pytest.importorskip("transformers")

from hf_models import KINDS, VOCAB, assert_close, assert_same_gradients, config, model_pair  # noqa: E402

from fastscale.integrations.transformers import FusedLinearHead, apply_fastscale  # noqa: E402
from fastscale.ops import cross_entropy_torch  # noqa: E402


def _labels(input_ids, ignored=0.25):
    labels = input_ids.clone()
    labels[torch.rand(labels.shape) < ignored] = -100
    return labels


def _pair(kind, reference="eager", attention=False, **overrides):
    """(stock model, a copy patched by apply_fastscale), in training mode."""
    ref, _ = model_pair(config(kind, **overrides), reference, reference)
    fast = apply_fastscale(copy.deepcopy(ref), attention=attention)
    return ref.train(), fast.train()


@pytest.mark.parametrize("kind", KINDS)
def test_loss_and_gradients_equal_stock(kind):
    input_ids = torch.randint(0, VOCAB, (2, 13))
    labels = _labels(input_ids)
    ref, fast = _pair(kind)
    expected, got = ref(input_ids, labels=labels), fast(input_ids, labels=labels)
    expected.loss.backward()
    got.loss.backward()
    assert got.logits is None
    assert_close(got.loss, expected.loss, "loss")
    assert_same_gradients(ref, fast)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_gradient_accumulation_with_num_items_in_batch(kind):
    """Two micro-batches, each loss summed and divided by the targets of both, as the Trainer does."""
    micro = [torch.randint(0, VOCAB, (2, 9)) for _ in range(2)]
    labels = [_labels(ids) for ids in micro]
    num_items = sum(int((lab[:, 1:] != -100).sum()) for lab in labels)
    ref, fast = _pair(kind, attention=True)
    for model in (ref, fast):
        for ids, lab in zip(micro, labels):
            model(ids, labels=lab, num_items_in_batch=torch.tensor(num_items)).loss.backward()
    assert_same_gradients(ref, fast)


def test_with_fastscale_attention_and_tied_embeddings():
    """Both patches at once on a Llama whose lm_head is its embedding."""
    input_ids = torch.randint(0, VOCAB, (3, 7))
    ref, fast = _pair("llama", "sdpa", attention=True, tie_word_embeddings=True)
    assert fast.lm_head.weight is fast.model.embed_tokens.weight
    assert fast.config._attn_implementation == "fastscale"
    expected, got = ref(input_ids, labels=input_ids), fast(input_ids, labels=input_ids)
    expected.loss.backward()
    got.loss.backward()
    assert_close(got.loss, expected.loss, "loss")
    assert_same_gradients(ref, fast)


@pytest.mark.parametrize("kind", ["gemma2", "gpt2"])
def test_logits_in_eval_or_when_asked(kind):
    """Eval mode, or return_logits=True in training: the stock logits (Gemma 2's softcapped) too."""
    input_ids = torch.randint(0, VOCAB, (2, 8))
    ref, fast = _pair(kind)
    for model in (ref, fast):
        model.eval()
    expected = ref(input_ids, labels=input_ids)
    for got in (fast(input_ids, labels=input_ids), fast.train()(input_ids, labels=input_ids, return_logits=True)):
        assert_close(got.logits, expected.logits, "logits")
        assert_close(got.loss, expected.loss, "loss")


def test_without_labels_runs_the_stock_forward():
    input_ids = torch.randint(0, VOCAB, (2, 8))
    ref, fast = _pair("qwen2")
    got = fast(input_ids)
    assert got.loss is None
    assert_close(got.logits, ref(input_ids).logits, "logits")


def test_shift_labels_and_tuple_output():
    input_ids = torch.randint(0, VOCAB, (2, 8))
    shift_labels = _labels(input_ids)
    ref, fast = _pair("mistral")
    expected = ref(input_ids, shift_labels=shift_labels, labels=input_ids).loss
    got = fast(input_ids, labels=input_ids, shift_labels=shift_labels, return_dict=False)
    assert isinstance(got, tuple)
    assert_close(got[0], expected, "loss")


def test_state_dict_and_signature_are_the_stock_ones():
    import inspect

    ref, fast = _pair("gpt2")
    assert isinstance(fast.lm_head, FusedLinearHead) and isinstance(fast.lm_head, torch.nn.Linear)
    assert fast.state_dict().keys() == ref.state_dict().keys()
    parameters = inspect.signature(fast.forward).parameters
    assert {"input_ids", "labels", "return_logits", "kwargs"} <= parameters.keys()
    assert apply_fastscale(fast, attention=False) is fast  # applying twice changes nothing


def test_unsupported_architectures_are_refused():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaForSequenceClassification

    neox = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1,
                                            num_attention_heads=4, intermediate_size=48))
    classifier = LlamaForSequenceClassification(config("llama"))
    for model, name in ((neox, "GPTNeoXForCausalLM"), (classifier, "LlamaForSequenceClassification")):
        with pytest.raises(ValueError, match=f"{name} .* is not supported by apply_fastscale; supported: "
                                             "LlamaForCausalLM \\(llama\\), MistralForCausalLM"):
            apply_fastscale(model)
    with pytest.raises(ValueError, match="model: dict \\(model_type None\\)"):
        apply_fastscale({})


class _LargestVocabTensor(TorchDispatchMode):
    """Records the most rows any op output with a vocabulary-sized dimension holds (numel / V)."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab, self.rows = vocab, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and self.vocab in t.shape:
                self.rows = max(self.rows, t.numel() // self.vocab)
        return out


@pytest.mark.parametrize("kind", ["llama", "gemma2"])
def test_no_logits_tensor_in_a_training_step(kind, monkeypatch):
    """Forward and backward of the patched model allocate no tensor of [tokens, V] elements: the
    largest vocabulary-sized tensor is the weight gradient [V, d] or one [rows, V] chunk. The stock
    model, under the same check, allocates them (so the check can fail)."""
    tokens, d = 2 * 41, 32
    monkeypatch.setattr(cross_entropy_torch, "CHUNK_BYTES", 8 * VOCAB * 4)  # 8-token chunks on CPU
    input_ids = torch.randint(0, VOCAB, (2, 41))
    ref, fast = _pair(kind)
    largest = {}
    for name, model in (("stock", ref), ("fastscale", fast)):
        with _LargestVocabTensor(VOCAB) as seen:
            model(input_ids, labels=input_ids).loss.backward()
        largest[name] = seen.rows
    assert largest["stock"] >= tokens
    assert largest["fastscale"] <= max(d, 8), largest
