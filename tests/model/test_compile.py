"""torch.compile(GPT, fullgraph=True) traces fastscale's ops (custom ops with fake implementations)
and trains exactly like the eager model.

The graphs are compiled with the "aot_eager" backend: dynamo and AOTAutograd trace the model, its
custom ops through their fake implementations and their autograd formulas, as for inductor, but the
graph runs as aten calls instead of generated C++ (inductor's code generation takes minutes on 2
cores and tests nothing of fastscale's).
"""

import copy

import pytest
import torch

from fastscale.model import GPT, GPTConfig



def tiny(**options) -> GPTConfig:
    return GPTConfig(**dict(vocab_size=37, seq_len=24, n_layer=2, d_model=32, n_head=4) | options)


def recording_backend(graphs: list):
    """aot_eager, keeping every graph dynamo hands it."""
    aot_eager = torch._dynamo.lookup_backend("aot_eager")

    def backend(gm, example_inputs):
        graphs.append(gm)
        return aot_eager(gm, example_inputs)

    return backend


def train(model, batches, forward) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for batch in batches:
        loss = forward(**batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    return losses, {name: p.detach().clone() for name, p in model.named_parameters()}


def batches(config: GPTConfig, packed: bool, steps: int) -> list[dict]:
    """The same batch `steps` times, so that the loss falls."""
    idx = torch.randint(0, config.vocab_size, (2, config.seq_len))
    targets = torch.randint(0, config.vocab_size, (2, config.seq_len))
    targets[0, :5] = -100
    batch = dict(idx=idx, targets=targets)
    if packed:  # three documents in the first row, one in the second, as data/packing.py makes them
        lengths = [7, 9, 8, 24]
        batch |= dict(cu_seqlens=torch.tensor([0, 7, 16, 24, 48], dtype=torch.int32), max_seqlen=24,
                      positions=torch.cat([torch.arange(n) for n in lengths]).view(2, 24))
    return [batch] * steps


def custom_ops(graphs) -> set[str]:
    return {str(node.target) for gm in graphs for node in gm.graph.nodes
            if node.op == "call_function" and str(node.target).startswith("fastscale.")}


CASES = {
    # the CPU path: both ops on their torch backends, in float64 so the comparison is tight
    "torch float64": (dict(), torch.float64, False, 3, {"fastscale.linear_cross_entropy_fused.default"}, 1e-9),
    # both ops on their Triton kernels (interpreted: one layer, two steps), packed documents, rotary,
    # GQA, tied embeddings, a window
    "triton bfloat16 packed": (
        dict(n_layer=1, positions="rotary", n_kv_head=2, tie_embeddings=True, window=11, attention_backend="triton",
             loss_backend="triton"),
        torch.bfloat16, True, 2, {"fastscale.linear_cross_entropy_fused.default", "fastscale.attention_triton.default"}, 2e-2,
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_compiled_gpt_trains_like_eager(case):
    options, dtype, packed, steps, ops, tolerance = CASES[case]
    config = tiny(**options)
    eager = GPT(config).to(dtype)
    compiled = copy.deepcopy(eager)
    data = batches(config, packed, steps)
    graphs = []
    forward = torch.compile(compiled, fullgraph=True, backend=recording_backend(graphs))
    eager_losses, eager_params = train(eager, data, eager)
    compiled_losses, compiled_params = train(compiled, data, forward)
    assert ops <= custom_ops(graphs), f"fastscale's custom ops are not in the traced graph: {custom_ops(graphs)}"
    assert len(graphs) == 1, "one graph for every step: no graph break, no recompilation"
    assert compiled_losses[-1] < compiled_losses[0]
    torch.testing.assert_close(torch.stack(compiled_losses), torch.stack(eager_losses), rtol=tolerance, atol=tolerance)
    for name, value in eager_params.items():
        torch.testing.assert_close(compiled_params[name], value, rtol=tolerance, atol=tolerance, msg=name)


def test_packed_rows_under_compile_need_max_seqlen():
    config = tiny(attention_backend="triton")
    model = torch.compile(GPT(config).to(torch.bfloat16), fullgraph=True, backend="aot_eager")
    batch = batches(config, packed=True, steps=1)[0]
    batch["max_seqlen"] = None
    with pytest.raises(Exception, match="max_seqlen=None with cu_seqlens under torch.compile"):
        model(**batch)
