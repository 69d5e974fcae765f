"""Preference pairs with the prompt put through the model once (`preference.share_prompt`): the same
log-probs, losses and gradients as both answers in full, for fewer tokens."""

from __future__ import annotations

import pytest
import torch

from pref_helpers import pairs_file, pref_config, write_jsonl
from tunery.data.batching import make_sequence_batch, make_shared_pair_batch
from tunery.data.render import Rendered
from tunery.models.forward import head_logits, root_logits, sequence_logps
from tunery.runfolder import RunFolder
from tunery.trainers import loop
from tunery.trainers.run import prepare, run_training

QUIET = dict(log=lambda _text: None)


def rendered(ids: list[int], answer_from: int) -> Rendered:
    return Rendered(ids, [i >= answer_from for i in range(len(ids))], False, False)


def test_the_mask_lets_the_second_answer_see_the_prompt_and_itself_only():
    first, second = rendered([5, 6, 7, 8], 2), rendered([5, 6, 9], 2)  # prompt [5, 6]; answers [7, 8] and [9]
    batch = make_shared_pair_batch([(first, second), (second, first)], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [5, 6, 9, 7, 8]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 2], [0, 1, 2, 2, 3]]
    assert batch["attention_mask"][0, 0].int().tolist() == [[1, 0, 0, 0, 0],
                                                            [1, 1, 0, 0, 0],
                                                            [1, 1, 1, 0, 0],
                                                            [1, 1, 1, 1, 0],
                                                            [1, 1, 0, 0, 1]]  # 9 sees the prompt, not 7 or 8
    # Row 0: 7 and 8 are predicted at positions 1 and 2, 9 at position 1 too (the prompt's last token).
    assert batch["target_pos"].tolist()[:3] == [1, 2, 1] and batch["target_ids"].tolist()[:3] == [7, 8, 9]
    assert batch["target_seq"].tolist() == [0, 0, 1, 2, 3, 3] and int(batch["sequences"]) == 4
    assert int(batch["real_tokens"]) == 10  # 5 tokens a pair, not 4 + 3


def test_a_shorter_pair_is_padded_and_its_padding_sees_only_itself():
    long, short = rendered([1, 2, 3, 4, 5], 2), rendered([1, 2, 6], 2)
    batch = make_shared_pair_batch([(long, rendered([1, 2, 3, 9, 9], 2)), (short, rendered([1, 2, 7], 2))], 0)
    assert batch["input_ids"].shape == (2, 7) and batch["input_ids"][1].tolist() == [1, 2, 6, 7, 0, 0, 0]
    mask = batch["attention_mask"][1, 0]
    assert mask[4].int().tolist() == [0, 0, 0, 0, 1, 0, 0] and mask[3].int().tolist() == [1, 1, 0, 1, 0, 0, 0]
    # The answers of pair 0 share their first token 3: both sequences still count it.
    assert batch["target_seq"].tolist().count(0) == 3 and batch["target_seq"].tolist().count(1) == 3


def pair_rows(tmp_path, tiny_model_dir, records):
    cfg = pref_config(tiny_model_dir, write_jsonl(tmp_path / "p.jsonl", records), training={"batch_size": 4})
    return prepare(cfg, **QUIET)


RECORDS = [{"prompt": "What is 2 plus 3?", "chosen": "5.", "rejected": "7, I think, but I am not sure."},
           {"prompt": "Name a colour of the sky at noon on a clear day.", "chosen": "Blue.", "rejected": "Blue!"},
           {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}],
            "chosen": "Hello.", "rejected": "Good day to you, and welcome."},
           {"prompt": "Say yes.", "chosen": "yes", "rejected": "no"}]


@pytest.mark.parametrize("logits_at", [head_logits, root_logits])
def test_shared_and_separate_answers_get_the_same_log_probs(tmp_path, tiny_model_dir, logits_at):
    s = pair_rows(tmp_path, tiny_model_dir, RECORDS)
    rows = s.train[:4]
    sides = [side for row in rows for side in (row.chosen, row.rejected)]
    shared = make_shared_pair_batch([(r.chosen, r.rejected) for r in rows], s.method.tokenizer.pad_token_id)
    separate = make_sequence_batch(sides, s.method.tokenizer.pad_token_id, packed=True)
    with torch.no_grad():
        got, got_counts = sequence_logps(s.model.eval(), shared, logits_at)
        want, want_counts = sequence_logps(s.model, separate, logits_at)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
    assert got_counts.tolist() == want_counts.tolist()
    assert int(shared["real_tokens"]) < sum(len(side.ids) for side in sides)


def test_sharing_changes_neither_the_loss_nor_the_gradient(tmp_path, tiny_model_dir):
    grads = {}
    for share in (True, False):
        cfg = pref_config(tiny_model_dir, pairs_file(tmp_path, 8), training={"batch_size": 4, "lr": 5e-2},
                          preference={"share_prompt": share})
        s = prepare(cfg, **QUIET)
        for p in s.model.parameters():  # move LoRA's B off zero so the policy differs from the reference
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(p.numel()))
        batch = s.method.collate(s.train[:4])
        out = loop.pass_loss(s, batch)
        out.total.backward()
        grads[share] = (out.total.item(), [p.grad.clone() for p in s.model.parameters() if p.requires_grad],
                        s.method.batch_tokens(batch), sum(s.method.row_tokens(r) for r in s.train[:4]))
    assert grads[True][0] == pytest.approx(grads[False][0], abs=1e-5)
    assert grads[True][2] == grads[True][3] < grads[False][2] == grads[False][3]  # the prompts counted once
    for a, b in zip(grads[True][1], grads[False][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_a_run_with_shared_prompts_logs_what_a_run_without_them_logs(tmp_path, tiny_model_dir, method):
    logged = {}
    for share in (True, False):
        cfg = pref_config(tiny_model_dir, pairs_file(tmp_path, 8), method=method, data={"val_split": 0.25},
                          training={"max_steps": 3}, preference={"share_prompt": share})
        run_training(cfg, tmp_path / f"run-{share}", **QUIET)
        logged[share] = [m for m in RunFolder(tmp_path / f"run-{share}").read_metrics() if "loss" in m]
    assert [m["step"] for m in logged[True]] == [m["step"] for m in logged[False]]
    for a, b in zip(logged[True], logged[False]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
