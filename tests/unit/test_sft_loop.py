"""The SFT loop on a tiny random model: exact resume, accumulation, NaN guard, early stopping, rotation."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

import pytest
from loop_helpers import make_loop, prefixed_rows, synthetic_rows, tiny_config
from tunery.errors import TuneryError
from tunery.models import adapters
from tunery.runfolder import RunFolder
from tunery.trainers import checkpoint as ckpt
from tunery.trainers import loop as sft


def fresh_setup(tok, cfg, n_train=10, n_val=4):
    return make_loop(tok, cfg, synthetic_rows(n_train), synthetic_rows(n_val, seed=1))


def run_loop(s, root, stop_after=None, state=None):
    steps = []

    def should_stop():
        steps.append(1)
        return stop_after is not None and len(steps) >= stop_after

    return sft.train(s, RunFolder(root), state or sft.LoopState(), should_stop)


def weights(s):
    return {k: v.clone() for k, v in adapters.trainable_state(s.model).items()}


@pytest.mark.parametrize("adapter", ["lora", "full"])
@pytest.mark.parametrize("kill_after", [1, 3, 5])
def test_resumed_run_is_bitwise_equal_to_uninterrupted(smol_tokenizer, tmp_path, adapter, kill_after):
    cfg = tiny_config(save_every=100)
    cfg = cfg.model_copy(update={"adapter": adapter})
    full = fresh_setup(smol_tokenizer, cfg)
    st_full, reason = run_loop(full, tmp_path / "a")
    assert reason == "finished" and st_full.step == 6

    first = fresh_setup(smol_tokenizer, cfg)
    st, reason = run_loop(first, tmp_path / "b", stop_after=kill_after)
    assert reason == "interrupted" and st.step == kill_after
    # A new process: fresh model and optimizer, everything else from the checkpoint on disk.
    torch.manual_seed(12345)  # the resumed run must not depend on the RNG it starts with
    second = fresh_setup(smol_tokenizer, cfg)
    latest = ckpt.latest_checkpoint(tmp_path / "b" / "checkpoints")
    assert latest.name == f"step-{kill_after:07d}"
    resumed_state = sft.resume(second, latest)
    st_resumed, reason = run_loop(second, tmp_path / "b", state=resumed_state)
    assert reason == "finished" and st_resumed.step == 6

    a, b = weights(full), weights(second)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert st_resumed.best_val == st_full.best_val and st_resumed.best_step == st_full.best_step


def no_dropout(cfg):
    return cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"dropout": 0.0})})


def test_accumulation_1x8_equals_8x1(smol_tokenizer):
    # Dropout off: the two layouts draw different dropout masks, which is not what is compared here.
    one_by_eight = fresh_setup(smol_tokenizer, no_dropout(tiny_config(batch_size=8, grad_accum=1)), n_train=8)
    eight_by_one = fresh_setup(smol_tokenizer, no_dropout(tiny_config(batch_size=1, grad_accum=8)), n_train=8)
    a, b = sft.accumulate(one_by_eight, 0), sft.accumulate(eight_by_one, 0)
    (loss_a, trained_a), (loss_b, trained_b) = (a.loss, a.units), (b.loss, b.units)
    assert trained_a == trained_b > 0
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    grads_a = {n: p.grad for n, p in one_by_eight.model.named_parameters() if p.requires_grad}
    grads_b = {n: p.grad for n, p in eight_by_one.model.named_parameters() if p.requires_grad}
    nonzero = 0
    for name, grad in grads_a.items():
        torch.testing.assert_close(grad, grads_b[name], rtol=1e-4, atol=1e-7)
        nonzero += int(grad.abs().sum() > 0)
    assert nonzero > 0


def poison_steps(model, bad_calls: set[int]):
    """Make the forward pass return NaN on the given forward calls (0-based)."""
    calls = {"n": 0}

    def hook(_module, _inputs, output):
        index = calls["n"]
        calls["n"] += 1
        return output * float("nan") if index in bad_calls else output

    model.get_input_embeddings().register_forward_hook(hook)


def test_nan_step_is_skipped_and_weights_stay_finite(smol_tokenizer, tmp_path):
    cfg = tiny_config(max_steps=4, eval_every=100, save_every=1, max_bad_steps=3)
    s = fresh_setup(smol_tokenizer, cfg, n_val=0)
    before = weights(s)
    poison_steps(s.model, {0})  # the first training forward
    st, reason = run_loop(s, tmp_path)
    assert reason == "finished" and st.step == 4
    metrics = RunFolder(tmp_path).read_metrics()
    assert metrics[0]["step"] == 1 and metrics[0]["loss"] is None  # NaN written as null
    first_ckpt = load_file(str(tmp_path / "checkpoints" / "step-0000004" / ckpt.WEIGHTS))
    assert all(torch.isfinite(t).all() for t in first_ckpt.values())
    assert any(not torch.equal(before[k], v) for k, v in weights(s).items())


def test_nan_steps_in_a_row_stop_the_run_with_a_clear_error(smol_tokenizer, tmp_path):
    cfg = tiny_config(max_steps=10, eval_every=100, save_every=1, max_bad_steps=3)
    s = fresh_setup(smol_tokenizer, cfg, n_val=0)
    poison_steps(s.model, {2, 3, 4})  # steps 3, 4 and 5 (batch_size 2, one forward per step)
    with pytest.raises(TuneryError, match="5: 3 steps in a row had a NaN/inf loss"):
        run_loop(s, tmp_path)
    saved = ckpt.complete_checkpoints(tmp_path / "checkpoints")
    assert [p.name for p in saved][-1] == "step-0000004"
    for folder in saved:
        for tensor in load_file(str(folder / ckpt.WEIGHTS)).values():
            assert torch.isfinite(tensor).all()


def test_early_stopping_keeps_the_best_weights(smol_tokenizer, tmp_path):
    # A learning rate this high makes validation loss rise after the first evaluation.
    cfg = tiny_config(max_steps=30, eval_every=1, early_stopping_patience=2, lr=0.5, keep_checkpoints=1)
    s = fresh_setup(smol_tokenizer, cfg)
    st, reason = run_loop(s, tmp_path)
    assert reason == "early_stopped"
    assert st.step == st.best_step + 2 and st.evals_since_best == 2
    evals = [m for m in RunFolder(tmp_path).read_metrics() if m["kind"] == "eval"]
    assert min(e["val_loss"] for e in evals) == st.best_val
    names = [p.name for p in ckpt.complete_checkpoints(tmp_path / "checkpoints")]
    assert f"step-{st.best_step:07d}" in names and f"step-{st.step:07d}" in names
    sft.restore_best(s, RunFolder(tmp_path), st)
    assert sft.evaluate(s)[0] == pytest.approx(st.best_val, rel=1e-6)


def test_the_optimizer_is_fused_adamw_for_plain_tensors_and_the_loop_for_others(smol_tokenizer):
    """Fused AdamW is torch's one-kernel form of the same update: after five steps its weights match
    the per-tensor loop's within float rounding; a tensor subclass (as FSDP's DTensors are) keeps the loop."""
    cfg = tiny_config(weight_decay=0.1)
    s = fresh_setup(smol_tokenizer, cfg)
    assert s.optimizer.defaults["fused"] is True and s.optimizer.defaults["foreach"] is None

    def five_steps(optimizer_of):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(64, 16)), torch.nn.Parameter(torch.randn(16))]
        start = [p.detach().clone() for p in params]
        optimizer = optimizer_of([("all", params)])
        for step in range(5):
            for p in params:
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(step))
            optimizer.step()
        assert all((p - s).abs().max() > 1e-4 for p, s in zip(params, start))  # the weights moved
        return params

    fused = five_steps(lambda groups: sft.make_optimizer(groups, cfg))
    loop = five_steps(lambda groups: torch.optim.AdamW([{"params": g} for _, g in groups], lr=cfg.peak_lr(),
                                                       weight_decay=0.1, foreach=False))
    for a, b in zip(fused, loop):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)

    class Subclass(torch.Tensor):
        pass

    odd = torch.nn.Parameter(torch.zeros(4).as_subclass(Subclass))
    kept = sft.make_optimizer([("all", [odd])], cfg)
    assert kept.defaults["fused"] is None and kept.defaults["foreach"] is False


def test_a_checkpoint_keeps_the_optimizer_state_not_its_kernel(smol_tokenizer, tmp_path):
    """The fused kernel (one process) and the loop (FSDP's DTensors) hold the same state: a checkpoint
    leaves out which one wrote it, and a resumed run keeps its own optimizer's kernel."""
    import json

    cfg = tiny_config(save_every=2)
    first = fresh_setup(smol_tokenizer, cfg)
    run_loop(first, tmp_path / "run", stop_after=2)
    latest = ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints")
    groups = json.loads((latest / "state.json").read_text())["optimizer"]["param_groups"]
    assert groups and all("fused" not in g and "foreach" not in g for g in groups)
    assert all(g["lr"] > 0 and g["betas"] == [0.9, 0.999] for g in groups)  # the rest of the group is kept
    second = fresh_setup(smol_tokenizer, cfg)
    sft.resume(second, latest)
    assert [g["fused"] for g in second.optimizer.param_groups] == [True] * len(groups)
    assert second.optimizer.state  # the moments came back


def test_shared_prefixes_train_as_whole_rows_and_resume_bitwise(smol_tokenizer, tmp_path):
    """`training.share_prefix` changes how a piece is laid out, not the update: without dropout the
    weights after six steps match a run that packs every row whole; with dropout a run still resumes
    bit for bit."""
    rows = prefixed_rows() * 2
    cfg = no_dropout(tiny_config(batch_size=8, chunk_tokens=120, save_every=100))
    shared = make_loop(smol_tokenizer, cfg, rows, rows[:4])
    whole = make_loop(smol_tokenizer, cfg.model_copy(update={"training": cfg.training.model_copy(
        update={"share_prefix": False})}), rows, rows[:4])
    assert shared.method.share and not whole.method.share
    assert "target_pos" in shared.method.collate(rows) and "labels" in whole.method.collate(rows)
    # 8 rows of 248 tokens: 3 pieces whole, 2 with their prefixes once (146 tokens)
    assert [len(p) for p in shared.method.pieces(rows[:8])] == [6, 2]
    assert [len(p) for p in whole.method.pieces(rows[:8])] == [4, 3, 1]
    run_loop(shared, tmp_path / "shared")
    run_loop(whole, tmp_path / "whole")
    a, b = weights(shared), weights(whole)
    assert any(float(v.abs().max()) > 0 for k, v in a.items() if "lora_B" in k)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6)

    cfg = tiny_config(batch_size=8, chunk_tokens=120, save_every=100)  # dropout 0.1
    straight = make_loop(smol_tokenizer, cfg, rows)
    run_loop(straight, tmp_path / "a")
    first = make_loop(smol_tokenizer, cfg, rows)
    run_loop(first, tmp_path / "b", stop_after=3)
    torch.manual_seed(12345)
    second = make_loop(smol_tokenizer, cfg, rows)
    state = sft.resume(second, ckpt.latest_checkpoint(tmp_path / "b" / "checkpoints"))
    run_loop(second, tmp_path / "b", state=state)
    a, b = weights(straight), weights(second)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_model_with_sliding_window_layers_packs_rows_whole(smol_tokenizer):
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(vocab_size=len(smol_tokenizer), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                             sliding_window=16))
    s = make_loop(smol_tokenizer, tiny_config(), prefixed_rows(), model=model)
    assert not s.method.share  # its own mask limits attention to a window: a 4D mask would replace it
    assert "labels" in s.method.collate(prefixed_rows())


def test_the_log_says_how_many_tokens_a_shared_prefix_saves(smol_tokenizer):
    from tunery.trainers.run import _log_layout

    cfg = tiny_config(batch_size=8, chunk_tokens=None)  # every step is the 8 rows in one piece
    logs = []
    shared = make_loop(smol_tokenizer, cfg, prefixed_rows())
    assert shared.method.model_tokens([prefixed_rows()]) == (146, 248)
    _log_layout(shared, logs.append)
    # 248 tokens a step whole; 20 + 24 + 38 tokens shared by 3, 2 and 2 rows: 102 fewer, 146 through
    assert logs == ["share_prefix: 876 of 1,488 tokens go through the model (41% fewer: prefixes that rows "
                    "of a piece share, once), over the first 6 steps"]
    logs.clear()
    off = cfg.model_copy(update={"training": cfg.training.model_copy(update={"share_prefix": False})})
    whole = make_loop(smol_tokenizer, off, prefixed_rows())
    assert whole.method.model_tokens([prefixed_rows()]) == (248, 248)
    _log_layout(whole, logs.append)
    assert logs == []


def test_without_eval_every_a_large_validation_set_is_validated_less_often(smol_tokenizer):
    from tunery.trainers.loop import validation_cost

    train, val = synthetic_rows(12), synthetic_rows(12, seed=1)
    cfg = tiny_config(eval_every=None, max_steps=20)  # 2 rows a step
    s = make_loop(smol_tokenizer, cfg, train, val)
    per_row = sum(len(r.ids) for r in train) / len(train)
    cost = sum(len(r.ids) for r in val) / (3 * per_row * 2)  # forwards over 12 rows against a step over 2
    assert validation_cost(s.method, train, val, 2) == pytest.approx(cost) and 1.5 < cost < 2.5
    # 20 steps allow floor(3 / cost) validations where a tenth of the run would be every 2 steps
    assert s.watch.eval_every == -(-20 // int(20 * 0.15 / cost))
    assert s.watch.note == (f"validation every {s.watch.eval_every} steps: a pass over the validation set costs "
                            f"about {cost:.2g} steps (set training.eval_every to validate more often)")
    small = make_loop(smol_tokenizer, cfg, train, val[:1]).watch  # a small set: a tenth of the run
    assert (small.eval_every, small.note) == (2, None)
    assert make_loop(smol_tokenizer, tiny_config(max_steps=20), train, val).watch.eval_every == 2  # as set
