"""The one place a training forward pass turns a batch into logits and a summed loss.

For the common decoder families the output head runs only at the positions whose next token carries
loss: a chat example trains perhaps a third of its tokens, and the head (vocabulary x hidden, 49k x 576
for SmolLM2) plus its softmax is a large share of the work per token. Families whose head does more
than a plain linear layer (logit soft-capping, scaling) take the full path, which computes the same loss.

How the logits at chosen positions are computed is a `LogitsAt` function: `head_logits` (the decoder,
then the head at those positions) for a model held whole by one process, `root_logits` (the model's own
forward with a boolean `logits_to_keep`) where the head cannot be called on its own, as under FSDP.
Methods take the function they are given and never ask which one it is.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from tunery.config.defaults import LOSS_PASS_TOKENS
from tunery.data.batching import IGNORE, bounded_batches, make_batch
from tunery.losses.head_ce import head_ce_sum
from tunery.losses.lm import token_ce_sum
from tunery.models.segment_attention import can_segment, segments_attention

# Families whose logits are exactly `lm_head(last_hidden_state)`.
PLAIN_HEAD_FAMILIES = {"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2", "smollm3"}

# Above this many logits in a micro-batch (128 MiB in fp32), the head's loss is made a slice of
# positions at a time (`losses.head_ce`): 682 positions a slice for SmolLM2's 49,152-token
# vocabulary, 261 for Llama 3's 128,256. Chat batches on a CPU stay far below it.
HEAD_SLICE_ELEMENTS = 1 << 25

# (model, batch, positions [B, T] bool) -> logits [positions.sum(), vocab]
LogitsAt = Callable[[torch.nn.Module, dict, torch.Tensor], torch.Tensor]


def causal_lm_of(model):
    """The transformers causal LM inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def has_plain_head(model) -> bool:
    causal = causal_lm_of(model)
    config = causal.config
    return (config.model_type in PLAIN_HEAD_FAMILIES
            and getattr(config, "final_logit_softcapping", None) is None
            and getattr(config, "logit_scale", None) is None)


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device | None = None,
                 segments: bool = False) -> dict[str, torch.Tensor]:
    """The batch's model inputs (on `device` when given, the weights' device); with `segments`, its
    attention described by the packed batch's segments instead of a mask (`models.segment_attention`)."""
    keys = ("input_ids", "position_ids") + (() if segments else ("attention_mask",))
    inputs = {k: batch[k].to(device) if device is not None else batch[k] for k in keys if k in batch}
    if segments:
        inputs["tunery_segments"] = batch["segments"]  # read as numbers: stays on the CPU
    # use_cache=False: no KV cache in training, and packed rows stay apart only without it.
    return inputs | {"use_cache": False}


def through(call, model, batch: dict[str, torch.Tensor], device: torch.device, **extra):
    """`call(**inputs, **extra)` on the batch's inputs: attention by segments where the batch lists
    them and the model can take them, else as the model was loaded (a mask, or causal)."""
    causal = causal_lm_of(model)
    if "segments" in batch and can_segment(causal, device):
        with segments_attention(causal):
            return call(**model_inputs(batch, device, segments=True), **extra)
    return call(**model_inputs(batch, device), **extra)


def device_of(model) -> torch.device:
    return next(model.parameters()).device


def head_logits(model, batch: dict[str, torch.Tensor], positions: torch.Tensor) -> torch.Tensor:
    """Logits at `positions` (True where wanted): the decoder once, then the head only there."""
    device = device_of(model)
    positions = positions.to(device)
    if not has_plain_head(model):
        return through(model, model, batch, device).logits[positions]
    causal = causal_lm_of(model)
    hidden = through(causal.get_decoder(), model, batch, device).last_hidden_state
    return causal.get_output_embeddings()(hidden[positions])


def root_logits(model, batch: dict[str, torch.Tensor], positions: torch.Tensor) -> torch.Tensor:
    """Logits at `positions` through the model's own forward (a boolean `logits_to_keep` runs the
    head there only, inside that forward). FSDP gathers the root's weights (embeddings, final norm,
    head) in the root's forward hook, so a sharded model must take this path. The batch moves to the
    weights' device (a GPU with CUDA)."""
    device = device_of(model)
    positions = positions.to(device)
    if not has_plain_head(model):
        return through(model, model, batch, device).logits[positions]
    return through(model, model, batch, device, logits_to_keep=positions).logits


def next_token_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions [B, T] whose next token is trained, those next tokens [n]): position t predicts t + 1."""
    targets = labels[:, 1:]
    keep = targets != IGNORE
    return torch.nn.functional.pad(keep, (0, 1), value=False), targets[keep]


def forward_loss(model, batch: dict[str, torch.Tensor], trained_only: bool = True,
                 logits_at: LogitsAt = head_logits) -> tuple[torch.Tensor, int]:
    """Summed next-token loss over trained tokens of one micro-batch, and their count.

    `trained_only=False` runs the head at every position (the plain path, kept for the invariant tests)."""
    positions, index, targets = trained_targets(batch)
    if not trained_only:
        device = device_of(model)
        logits = through(model, model, batch, device).logits
        return token_ce_sum(in_target_order(logits[positions.to(device)], index), targets.to(device))
    head = _sliceable_head(model) if logits_at is head_logits else None
    if head is not None and int(positions.sum()) * head.out_features > HEAD_SLICE_ELEMENTS:
        device = device_of(model)
        hidden = through(causal_lm_of(model).get_decoder(), model, batch, device).last_hidden_state
        return head_ce_sum(in_target_order(hidden[positions.to(device)], index), head.weight,
                           targets.to(device), HEAD_SLICE_ELEMENTS // head.out_features)
    logits = logits_at(model, batch, positions)
    return token_ce_sum(in_target_order(logits, index), targets.to(logits.device))


def trained_targets(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(positions [B, T] whose logits are needed, index of each target into those logits or None when
    they are one to one, target tokens [n]), whether the batch has labels or lists its targets."""
    if "target_pos" in batch:
        return listed_targets(batch)
    positions, targets = next_token_targets(batch["labels"])
    return positions, None, targets


def in_target_order(rows: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """Rows computed once per wanted position, one per target (a shared position repeats). A gather
    whose backward adds into place (`index_select`), which on [targets, vocabulary] logits costs a
    fraction of what indexing's accumulate-put does."""
    return rows if index is None else rows.index_select(0, index.to(rows.device))


def _sliceable_head(model) -> torch.nn.Linear | None:
    """The output head when the loss may be made a slice at a time: a plain bias-free linear layer
    (not a LoRA-wrapped one) of a family whose logits are exactly the head's output."""
    if not has_plain_head(model):
        return None
    head = causal_lm_of(model).get_output_embeddings()
    return head if type(head) is torch.nn.Linear and head.bias is None else None


def listed_targets(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(positions [B, T] whose logits are needed, index of each target into those logits [n] or None
    when the targets' positions strictly increase, target tokens [n]) of a batch that lists its targets
    (`target_pos`, `target_ids`): one position may predict several targets (a shared prompt's last
    token predicts the first token of both answers)."""
    shape, listed = batch["input_ids"].shape, batch["target_pos"]
    flat = torch.zeros(shape[0] * shape[1], dtype=torch.bool)
    flat[listed] = True
    if listed.numel() < 2 or bool((listed[1:] > listed[:-1]).all()):
        return flat.view(shape), None, batch["target_ids"]  # one target a position, in order: no gather
    rank = torch.cumsum(flat, 0) - 1  # the row of each wanted position in the logits
    return flat.view(shape), rank[listed], batch["target_ids"]


def token_logps(model, batch: dict[str, torch.Tensor], logits_at: LogitsAt = head_logits) -> torch.Tensor:
    """Log-probability of every trained token [n], in the order `next_token_targets` lists them (or
    the batch's own list, see `listed_targets`)."""
    positions, index, targets = trained_targets(batch)
    logits = in_target_order(logits_at(model, batch, positions), index)
    return -torch.nn.functional.cross_entropy(logits.float(), targets.to(logits.device), reduction="none")


def sequence_logps(model, batch: dict[str, torch.Tensor], logits_at: LogitsAt = head_logits
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of log-probs of each sequence's trained tokens [S], their count [S]) for a batch that says
    which sequence each trained token belongs to (`target_seq`, in the order `next_token_targets` lists
    them) and how many sequences it holds (`sequences`). What preference and RL methods score answers by."""
    logps = token_logps(model, batch, logits_at)
    seq = batch["target_seq"].to(logps.device)
    count = int(batch["sequences"])
    sums = torch.zeros(count, dtype=logps.dtype, device=logps.device).index_add(0, seq, logps)
    counts = torch.bincount(seq, minlength=count).to(logps.dtype)
    return sums, counts


@torch.no_grad()
def mean_loss(model, rows, pad_id: int, batch_size: int = 8, packed: bool = True) -> tuple[float, int]:
    """Mean loss per trained token over rendered rows, `batch_size` rows at a time, and the token count
    (nan without any). What held-out and answer losses are, wherever they are measured."""
    total, count = 0.0, 0
    for batch in bounded_batches(rows, batch_size, LOSS_PASS_TOKENS, padded=not packed):
        loss_sum, n = forward_loss(model, make_batch(batch, pad_id, packed))
        total, count = total + float(loss_sum), count + int(n)
    return (total / count if count else math.nan), count
