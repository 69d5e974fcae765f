"""Graders: one spec (``exact``, ``numeric:0.01``, ``regex:^A$``, ``json_schema:s.json`` ...) used as an
evaluation metric, an RL reward and a release gate. See `tunery.graders.spec` for the list."""

from tunery.graders.spec import KINDS, Grader, parse_grader, parse_graders, split_spec_list
from tunery.graders.uses import gate, reward, score_all

__all__ = ["KINDS", "Grader", "gate", "parse_grader", "parse_graders", "reward", "score_all",
           "split_spec_list"]
