"""The studies' view of a trained run: weights back from the newest intact checkpoint (ZeRO 0 and 3),
loaded as data only (a planted pickle never runs, a damaged newest checkpoint is named and the previous
one used), and per-token losses of whole documents, against the trainer's own eval loss and a
one-document-at-a-time float64 computation."""

import copy
import json
import shutil

import numpy as np
import pytest
import torch

from fastscale.data import build
from fastscale.model import GPT, GPTConfig
from fastscale.sweep.evaluation import load_trained, newest_checkpoint, token_losses, token_scores
import processes
from fastscale.train import checkpoint as ckpt


@pytest.fixture(scope="module")
def runs(digits_run, tmp_path_factory):
    """The session's digits run (ZeRO 0) and the same run trained under ZeRO 3 (checkpoints at steps 3 and
    6; digits: every document is BOS + 192 pixels = seq_len, so each val row is one whole document),
    shared by the tests: copy before changing."""
    zero3 = {**digits_run.deepspeed, "zero_optimization": {"stage": 3}}
    return {0: digits_run.run_dir, 3: processes.train(tmp_path_factory.mktemp("zero3"), digits_run.config, zero3)}


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 3])
def test_trained_model_reproduces_the_trainers_eval_loss(runs, stage):
    run_dir = runs[stage]
    assert newest_checkpoint(run_dir).name == "step00000006"
    model = load_trained(run_dir)
    _, _, val, _ = build("digits")
    # the trainer evaluated the first eval_batches x micro-batch = 4 rows: documents 0..3, 192 predictions each
    losses = token_losses(model, val[:4])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert np.concatenate(losses).mean() == pytest.approx(summary["final_eval_loss"], rel=1e-5)


def test_token_losses_of_uneven_documents_match_one_at_a_time_float64(rng):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, seq_len=40, n_layer=2, d_model=16, n_head=2)).eval()
    docs = [rng.integers(0, 11, size=n) for n in (2, 40, 7, 33, 3, 40, 19)]
    got = token_losses(model, docs, batch_size=3)  # several batches, each padded to its longest
    _, hits = token_scores(model, docs, batch_size=3)
    reference = copy.deepcopy(model).double()
    for doc, loss, hit in zip(docs, got, hits):
        with torch.no_grad():
            logits = reference(torch.from_numpy(doc)[None, :-1])[0]
        expected = -torch.log_softmax(logits, -1)[torch.arange(len(doc) - 1), torch.from_numpy(doc[1:])]
        assert loss.dtype == np.float64 and loss.shape == (len(doc) - 1,)
        np.testing.assert_allclose(loss, expected.numpy(), rtol=1e-5, atol=1e-6)
        top2 = logits.topk(2, dim=-1).values
        clear = (top2[:, 0] - top2[:, 1] > 1e-4).numpy()  # float32 logits may order a near-tie the other way
        np.testing.assert_array_equal(hit[clear], (logits.argmax(-1) == torch.from_numpy(doc[1:])).numpy()[clear])


def test_documents_longer_than_the_context_are_refused():
    model = GPT(GPTConfig(vocab_size=11, seq_len=8, n_layer=1, d_model=16, n_head=2))
    with pytest.raises(ValueError, match=r"documents\[1\]: shape \(9,\); expected 1-D with 2 to seq_len=8"):
        token_losses(model, [np.zeros(3, dtype=np.int64), np.zeros(9, dtype=np.int64)])


class Payload:
    """Unpickled by a plain torch.load, it runs code: it creates the file `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('the payload ran')",))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"])
def test_a_planted_pickle_never_runs_in_zero3_consolidation(runs, tmp_path, name):
    """DeepSpeed's zero_to_fp32 loads both files with weights_only=False; through load_trained it may not."""
    run_dir = tmp_path / "run"
    shutil.copytree(runs[3], run_dir)
    path = run_dir / "checkpoints" / "step00000006" / name
    marker = tmp_path / "payload-ran"
    state = torch.load(path, weights_only=False)
    state["payload"] = Payload(marker)
    torch.save(state, path)
    torch.load(path, weights_only=False)
    assert marker.is_file()  # a plain load runs it
    marker.unlink()
    info = json.loads((path.parent / ckpt.MARKER).read_text())
    (path.parent / ckpt.MARKER).write_text(json.dumps({**info, "files": ckpt.hash_step(path.parent)}))  # verifies: only the load can refuse it
    with pytest.raises(ckpt.CheckpointError, match=rf"{path}: refused to load: it asks for builtins.exec"):
        load_trained(run_dir)
    assert not marker.exists()


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_is_named_and_the_previous_one_loaded(runs, tmp_path, caplog):
    run_dir = tmp_path / "run"
    shutil.copytree(runs[0], run_dir)
    path = run_dir / "checkpoints" / "step00000006" / "mp_rank_00_model_states.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte inside the zip: torch.load would not notice (no CRC check)
    path.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        model = load_trained(run_dir)
    assert f"{path}: SHA-256 differs from the recorded one (damaged bytes)" in caplog.text
    older = ckpt.safe_load(run_dir / "checkpoints" / "step00000003" / "mp_rank_00_model_states.pt")["module"]
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, older[name].float(), rtol=0, atol=0)


def test_a_run_without_checkpoints_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        load_trained(tmp_path)
