"""Config sections of the methods beyond SFT: preference (dpo, orpo, kto, reward), online RL and
vision. Part of the typed schema (`tunery.config.schema` holds the whole `TrainConfig`)."""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import Field, field_validator

from tunery.config.section import Section, checked_graders


class PreferenceSection(Section):
    """Preference methods: `dpo` (with its loss variants), `orpo`, `kto` and `reward`."""

    loss: Literal["sigmoid", "ipo", "hinge", "robust", "simpo"] = Field(
        "sigmoid",
        description="`method: dpo` loss: `sigmoid` (DPO), `ipo`, `hinge`, `robust` (label noise), or the "
        "reference-free `simpo`.",
    )
    beta: float = Field(
        0.1, gt=0, description="How far the tuned model may move from the reference (DPO's beta; ORPO's "
        "and KTO's beta; SimPO's reward scale)."
    )
    label_smoothing: float = Field(
        0.0, ge=0.0, lt=0.5, description="Assumed share of flipped pairs (`sigmoid`: conservative DPO; `robust`)."
    )
    simpo_gamma: float = Field(0.5, ge=0.0, description="SimPO's target reward margin.")
    reference: Literal["auto", "adapter_off", "precomputed"] = Field(
        "auto",
        description="Where the reference log-probabilities come from: `adapter_off` (LoRA: the same model "
        "with the adapter switched off, no second copy in memory), `precomputed` (once before training, "
        "kept in the run folder), or `auto` (adapter_off for LoRA/QLoRA, precomputed for full fine-tuning).",
    )
    desirable_weight: float = Field(1.0, gt=0, description="KTO: weight of desirable (label true) examples.")
    undesirable_weight: float = Field(1.0, gt=0, description="KTO: weight of undesirable (label false) examples.")
    use_margin: bool = Field(
        True, description="`reward`: subtract a pair's `margin` field (when present) inside the Bradley-Terry loss."
    )
    share_prompt: bool = Field(
        True, description="`dpo`, `orpo`: put each pair's prompt through the model once for both answers (one "
        "row per pair, the second answer masked from the first); the same log-probs for fewer tokens."
    )


class RLSection(Section):
    """Online reinforcement learning (`method: rl`): sample answers to the training prompts, score them
    with graders, and move the model towards the better ones (GRPO or RLOO)."""

    algorithm: Literal["grpo", "rloo"] = Field(
        "grpo", description="`grpo`: advantages normalised within each group of answers to one prompt; `rloo`: "
        "leave-one-out baseline (each answer against the mean of the others)."
    )
    graders: list[Union[str, dict[str, Any], list[Union[str, dict[str, Any]]]]] = Field(
        default_factory=list,
        description="The reward: grader specs scored on each sampled answer (the record's fields, e.g. "
        "`answer`, are their reference); several are averaged. Required for `method: rl`.",
    )
    group_size: int = Field(4, ge=2, description="Answers sampled per prompt (a group).")
    max_new_tokens: int = Field(64, ge=1, description="Longest sampled answer in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the answers.")
    top_p: float = Field(1.0, gt=0, le=1.0, description="Nucleus sampling: keep the smallest set of tokens "
                         "whose probability reaches top_p.")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="GRPO: divide advantages by the group's reward spread, the batch's, or not at all."
    )
    kl_beta: float = Field(
        0.0, ge=0.0, description="Weight of a KL penalty to the reference (the model with the adapter switched off); "
        "0 skips the reference pass."
    )
    clip_low: float = Field(0.2, gt=0, lt=1, description="Lower clip of the probability ratio (1 - clip_low).")
    clip_high: float = Field(0.2, gt=0, description="Upper clip of the probability ratio (1 + clip_high).")
    updates_per_generation: int = Field(
        1, ge=1, description="Optimizer steps taken on each batch of sampled answers (the clipped ratio keeps "
        "later ones close to the policy that sampled them)."
    )
    @field_validator("graders")
    @classmethod
    def _known_graders(cls, specs: list) -> list:
        return checked_graders(specs)

    log_completions: int = Field(
        4, ge=0, description="Sampled answers (with their rewards) appended to the run's completions.jsonl "
        "at each sampling."
    )


class VisionSection(Section):
    """Vision-language fine-tuning (`method: vision`): which parts learn and how images are read."""

    train: Literal["none", "projector", "tower"] = Field(
        "none",
        description="Vision parts that learn besides the language model: `none` (LoRA, or every weight with "
        "`adapter: full`, on the language model only), `projector` (the projector too, in full) or `tower` "
        "(the projector and the vision tower, in full). With LoRA they are saved in full next to the adapter. "
        "tunery's composed `smollm2-135m-vision` has an untrained projector: train it with `projector`.",
    )
    projector_lr: float | None = Field(
        None, gt=0, description="Peak learning rate of the vision parts that learn in full (`vision.train`: the "
        "projector, the tower), on the same schedule as `training.lr`, which the language model's LoRA (or "
        "weights) keep; empty: `training.lr` for both. LLaVA trains a new projector faster than the language model.",
    )
    projector_first_steps: int = Field(
        0, ge=0, description="The first N optimizer steps train the vision parts alone: the language model's LoRA "
        "(or weights) wait, their learning rate 0 (LLaVA's first stage: the projector learns to write what the "
        "unchanged language model reads); then everything learns together. 0: together from the start. "
        "Measured on `smollm2-135m-vision`: see docs/vision.md.",
    )
    max_image_pixels: int = Field(
        64_000_000, ge=1, description="Largest image in pixels; a larger one is an error named by file and line."
    )
    longest_edge: int | None = Field(
        None, ge=16, description="Idefics3 / SmolVLM: resize images so their longest edge is this many pixels "
        "before tiling (empty: the processor's own, 4 x 364 for SmolVLM).",
    )
    tiling: bool | None = Field(
        None, description="Idefics3 / SmolVLM: split large images into tiles plus a global view (empty: the "
        "processor's own). Off: one view per image, far fewer image tokens.",
    )
    max_pixels: int | None = Field(
        None, ge=784, description="Qwen2-VL / Qwen2.5-VL: most pixels an image is resized to (its token count "
        "is about pixels / 784); empty: the processor's own.",
    )
