"""`apply_fastscale(model)`: a transformers causal LM whose loss never materializes the logits.

A stock causal LM computes logits = lm_head(hidden) for every token, [tokens, V] in float32 for the
loss, then shifts the labels and takes cross-entropy. Here the model's forward is replaced, on this
instance only, by one that runs the base model, shifts the labels the same way (ignore_index -100,
or the caller's shift_labels), and hands hidden states and labels to the output projection itself:
lm_head becomes a FusedLinearHead, an nn.Linear (same Parameter, same state_dict, tied embeddings
kept) whose forward with targets is fastscale.ops.linear_cross_entropy. Because the loss runs inside
lm_head's own forward, DeepSpeed ZeRO-3 gathers the weight around it as it does for
fastscale.nn.LinearCrossEntropyLoss. Gemma 2's final logit softcap becomes the op's softcap;
num_items_in_batch (gradient accumulation) turns the mean into sum / num_items_in_batch, as
transformers' ForCausalLMLoss does.

Logits are returned in eval mode, or with forward(..., return_logits=True); a training forward
with labels returns loss only. Without labels the stock forward runs.
"""

from __future__ import annotations

import dataclasses
import inspect
import types

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from fastscale.ops import linear_cross_entropy

from .attention import NAME

# model_type -> the causal-LM class whose forward is replaced (what the tests compare with stock).
SUPPORTED = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
}
IGNORE_INDEX = -100
_LOSS_KWARGS = ("num_items_in_batch", "shift_labels", "ignore_index")
# what the output carries over from the base model's (the cache field's name changed in transformers 5.24)
_CARRIED = {field.name for field in dataclasses.fields(CausalLMOutputWithPast)} - {"loss", "logits"}


class FusedLinearHead(nn.Linear):
    """An lm_head that also computes the loss: forward(hidden) is nn.Linear's; forward(hidden,
    targets, ...) returns the cross-entropy of its logits through fastscale.ops.linear_cross_entropy."""

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor | None = None, *, reduction: str = "mean",
                softcap: float | None = None, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
        if targets is None:
            return super().forward(hidden)
        return linear_cross_entropy(hidden, self.weight, targets, bias=self.bias, ignore_index=ignore_index,
                                    reduction=reduction, softcap=softcap)


def apply_fastscale(model: nn.Module, *, attention: bool = True) -> nn.Module:
    """Patches a transformers causal LM in place and returns it: its loss through
    fastscale.ops.linear_cross_entropy (module docstring) and, with attention=True, its attention
    implementation set to "fastscale". Refuses architectures it has not been tested on."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    expected = SUPPORTED.get(model_type)
    if expected is None or type(model).__name__ != expected:
        supported = ", ".join(f"{name} ({kind})" for kind, name in SUPPORTED.items())
        raise ValueError(f"model: {type(model).__name__} (model_type {model_type!r}) is not supported by "
                         f"apply_fastscale; supported: {supported}")
    head = model.get_output_embeddings()
    if type(head) not in (nn.Linear, FusedLinearHead):
        raise ValueError(f"model: its output embeddings are a {type(head).__name__}; expected an nn.Linear lm_head")
    head.__class__ = FusedLinearHead
    if "forward" not in vars(model):
        model.forward = types.MethodType(_make_forward(type(model).forward), model)
    if attention:
        model.set_attn_implementation(NAME)
    return model


def _make_forward(stock_forward):
    signature = inspect.signature(stock_forward)

    def forward(self, *args, return_logits: bool | None = None, **kwargs):
        arguments = _bind(signature, self, args, kwargs)
        labels = arguments.pop("labels", None)
        if labels is None and arguments.get("shift_labels") is None:
            return stock_forward(self, **arguments)
        return _fused_forward(self, labels, arguments, not self.training if return_logits is None else return_logits)

    forward.__doc__ = stock_forward.__doc__
    forward.__signature__ = _with_return_logits(signature)
    return forward


def _with_return_logits(signature: inspect.Signature) -> inspect.Signature:
    """The stock signature with return_logits, for the Trainer, which reads the bound forward's to
    keep dataset columns and to pass num_items_in_batch (it does when there is a **kwargs)."""
    parameters = list(signature.parameters.values())
    extra = inspect.Parameter("return_logits", inspect.Parameter.KEYWORD_ONLY, default=None)
    at = next((i for i, p in enumerate(parameters) if p.kind is inspect.Parameter.VAR_KEYWORD), len(parameters))
    return signature.replace(parameters=[*parameters[:at], extra, *parameters[at:]])


def _bind(signature: inspect.Signature, model, args, kwargs) -> dict:
    """The call's arguments by name, with the forward's **kwargs flattened in."""
    bound = signature.bind(model, *args, **kwargs).arguments
    bound.pop("self")
    for name, parameter in signature.parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            bound.update(bound.pop(name, {}))
    return bound


def _fused_forward(model, labels, arguments: dict, return_logits: bool):
    loss_kwargs = {name: arguments.pop(name) for name in _LOSS_KWARGS if name in arguments}
    logits_to_keep = arguments.pop("logits_to_keep", 0)
    return_dict = arguments.pop("return_dict", None)
    outputs = model.base_model(**arguments)
    hidden = outputs[0]
    head = model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    loss = _loss(head, hidden, labels, softcap, **loss_kwargs)
    logits = _logits(head, hidden, logits_to_keep, softcap) if return_logits else None
    carried = {name: value for name, value in outputs.items() if name in _CARRIED}  # the cache, states, attentions
    result = CausalLMOutputWithPast(loss=loss, logits=logits, **carried)
    return result.to_tuple() if return_dict is False else result


def _loss(head: FusedLinearHead, hidden, labels, softcap, num_items_in_batch=None, shift_labels=None,
          ignore_index=IGNORE_INDEX):
    """transformers' ForCausalLMLoss: the token at t predicts labels[t + 1]; the mean over
    non-ignored targets, or their sum / num_items_in_batch when the Trainer accumulates gradients."""
    if shift_labels is None:
        shift_labels = nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    targets = shift_labels.to(hidden.device)
    if num_items_in_batch is None:
        return head(hidden, targets, reduction="mean", softcap=softcap, ignore_index=ignore_index)
    total = head(hidden, targets, reduction="sum", softcap=softcap, ignore_index=ignore_index)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def _logits(head: FusedLinearHead, hidden, logits_to_keep, softcap):
    """The stock model's logits: the kept positions' projection, softcapped for Gemma 2."""
    if isinstance(logits_to_keep, int):
        hidden = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
    else:
        hidden = hidden[:, logits_to_keep]
    logits = head(hidden)
    return logits if softcap is None else softcap * torch.tanh(logits / softcap)
