"""What a training method is: only what differs between methods, nothing of the loop.

The loop (`trainers/loop.py`) owns accumulation, the NaN guard, validation, graders during training,
early stopping, checkpoints, exact resume and the final save, under any strategy. A method supplies:

- `load_data`: its records as rows (and the validation examples graders may answer);
- `pieces` and `collate`: how the rows of one micro-batch become the batches run through forward and
  backward one at a time;
- `units`: how many units (trained tokens, pairs, completions) a batch's loss is summed over, known
  before its forward pass;
- `loss`: a `LossOut` for one batch: the loss *summed* over the batch's units (trained tokens, pairs,
  completions), how many units, and figures to log (also sums over units; the loop logs their means);
- `final_artefact`: what the run leaves behind (by default adapter/ or model/, plus tokenizer/);
- optionally `state_tensors` / `load_state_tensors`, for methods that carry state between steps (an RL
  method's generation buffer), which the loop saves in every checkpoint.

The loop divides every batch's summed loss by the units of the whole step, over every micro-batch and
process, so that 1 x 8 and 8 x 1 give the same update whatever the method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch

from tunery.config.schema import TrainConfig
from tunery.data.batching import count_tokens, count_trained, make_batch, split_by_tokens
from tunery.data.render import Datasets
from tunery.models import adapters
from tunery.models.forward import LogitsAt
from tunery.runfolder import RunFolder


@dataclass
class LossOut:
    """One batch's contribution to a step."""

    total: torch.Tensor  # the loss summed over the batch's units
    count: int  # units the step's loss is averaged over (trained tokens, pairs, ...)
    figures: dict[str, float] = field(default_factory=dict)  # sums over the units, logged as means


class Method:
    """Defaults shared by methods that train on rendered token rows (`Rendered`: ids + trained flags).

    A subclass overrides what differs; `name` is the config's `method` value, `unit` names what
    `LossOut.count` counts in the log."""

    name = "method"
    unit = "tokens"
    figures: tuple[str, ...] = ()  # names of the figures `loss` returns, logged as means per unit
    figure_units: dict[str, str] = {}  # figure -> the figure that counts its units (else the loss's units)
    steps_per_batch = 1  # optimizer steps taken on each batch of the plan (several updates per generation)
    validates_itself = False  # True: `validate` measures the validation set instead of the loss
    step_logs: tuple[str, ...] = ()  # run-folder files of JSON lines with a "step", cut back on resume

    def __init__(self, cfg: TrainConfig, tokenizer):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.rank = 0  # this process's rank (set by the loop), for methods that seed per process
        self.log: Callable[[str], None] = print  # the run's log (set by `tunery.trainers.run.prepare`)

    def load_base(self):
        """The base model this method trains (a causal LM in `cfg.dtype`, or 4-bit for QLoRA)."""
        from tunery.models.quant import load_for_training

        return load_for_training(self.cfg)

    def load_data(self, cache_dir: Path | None = None, write_cache: bool = True) -> Datasets:
        raise NotImplementedError

    def make_trainable(self, model):
        """The model in its trainable form (LoRA, QLoRA or every weight, per the config)."""
        return adapters.prepare_trainable(model, self.cfg)

    def param_groups(self, model) -> list[tuple[str, list[torch.nn.Parameter]]]:
        """(name, parameters) of each optimizer group, in order; one group of every trainable weight by
        default. A method that gives a part its own learning rate returns several, and `lr_scale` says
        what each group's learning rate is at a step."""
        return [("all", [p for p in model.parameters() if p.requires_grad])]

    def lr_scale(self, group: str, step: int) -> float:
        """Factor on the scheduled learning rate of optimizer group `group` at optimizer step `step`."""
        return 1.0

    def prepare(self, model, logits_at: LogitsAt) -> None:
        """Called once the model is trainable and placed, before any step or resume, with the base
        weights still in place (precomputed reference log-probs, say)."""

    def expand(self, model, micro_rows: list[list], step: int, dry: bool = False) -> list[list]:
        """The rows each micro-batch of `step` trains on; by default its records themselves. A method
        that samples what it trains on (RL: completions of the prompts) does it here; `dry` asks for rows
        of the largest size it could produce, without sampling (the preflight's estimate)."""
        return micro_rows

    def validate(self, model, mine: list[int], rows: list, strategy) -> tuple[float, dict[str, float]] | None:
        """(validation figure, lower is better; figures) over this process's validation rows `mine`,
        for methods with `validates_itself` (the loop's loss-based validation otherwise)."""
        raise NotImplementedError

    def derive_figures(self, means: dict[str, float]) -> dict[str, float]:
        """Figures computed from the logged means (a spread from a mean of squares, say)."""
        return means

    def pieces(self, rows: list) -> list[list]:
        """A micro-batch's rows in the pieces that go through forward and backward one at a time.

        With packing, pieces of at most `training.chunk_tokens` tokens: the step's gradient is the same
        sum, but only one piece's activations are alive at a time."""
        tc = self.cfg.training
        return split_by_tokens(rows, tc.chunk_tokens, self.row_tokens) if tc.packing else [list(rows)]

    def collate(self, rows: list) -> dict[str, torch.Tensor]:
        return make_batch(rows, self.tokenizer.pad_token_id, self.cfg.training.packing)

    def pieces_note(self, pieces: Iterable[list]) -> str | None:
        """A line for the log on how pieces like these go through the model (none by default)."""
        return None

    def model_tokens(self, pieces: Iterable[list]) -> tuple[int, int]:
        """(tokens the model runs, tokens the rows count as whole, `row_tokens`) over `pieces`: the same
        unless a method lays rows out with less (SFT's shared prefixes)."""
        whole = sum(self.row_tokens(row) for piece in pieces for row in piece)
        return whole, whole

    def row_tokens(self, row) -> int:
        """Tokens one row puts through the model (what pieces and the preflight count)."""
        return len(row.ids)

    def batch_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Real tokens of a batch (throughput figures)."""
        return count_tokens(batch)

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        """The units a batch's loss is summed over, known before its forward pass (trained tokens)."""
        return count_trained(batch)

    def loss_units(self, batch: dict[str, torch.Tensor]) -> float:
        """What the batch's summed loss is divided by (summed over the step): its units, unless the
        method weighs some units more than others (SFT's replay under `data.replay_weight: example`)."""
        return self.units(batch)

    def loss(self, model, batch: dict[str, torch.Tensor], logits_at: LogitsAt) -> LossOut:
        raise NotImplementedError

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors the method carries between steps, saved in every checkpoint (none by default)."""
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Put back what `state_tensors` returned when the checkpoint was written."""

    def final_artefact(self, model, run: RunFolder, state_dict: dict | None = None) -> Path:
        """Write what the run leaves behind; returns its folder. `state_dict`: the full weights when
        they were gathered from several processes."""
        from tunery.trainers.final_save import save_final

        return save_final(model, self.tokenizer, run, self.cfg.adapter, state_dict=state_dict)
