"""The training methods, by the name a config gives in `method:`. Adding one is a class and a line here."""

from __future__ import annotations

from tunery.config.schema import TrainConfig
from tunery.trainers import reward_grader  # noqa: F401  installs the reward_model grader's scorer
from tunery.trainers.method import Method
from tunery.trainers.methods.preference import DPO, KTO, ORPO
from tunery.trainers.methods.reward import RewardModel
from tunery.trainers.methods.rl import RL
from tunery.trainers.methods.sft import CPT, SFT
from tunery.trainers.methods.vision import VisionSFT

METHODS: dict[str, type[Method]] = {"sft": SFT, "cpt": CPT, "dpo": DPO, "orpo": ORPO, "kto": KTO,
                                   "reward": RewardModel, "rl": RL, "vision": VisionSFT}


def method_for(cfg: TrainConfig, tokenizer) -> Method:
    """The method `cfg.method` names, set up with the run's config and tokenizer."""
    return METHODS[cfg.method](cfg, tokenizer)
