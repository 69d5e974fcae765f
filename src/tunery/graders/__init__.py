"""Graders: one spec (``exact``, ``numeric:0.01``, ``regex:^A$``, ``json_schema:s.json``, ``python:f.py:fn``,
``code_tests:5``, ``0.7*exact+0.3*json`` ...) used as an evaluation metric, an RL reward and a release
gate. See `tunery.graders.spec` for the list and `tunery.graders.base` for what a grader is."""

from tunery.graders.base import GraderFailed, Scorer
from tunery.graders.spec import KINDS, Grader, parse_grader, parse_graders, split_spec_list
from tunery.graders.uses import Failures, gate, parse_gate, reward, rewards, score_all, score_batch

__all__ = ["KINDS", "Failures", "Grader", "GraderFailed", "Scorer", "gate", "parse_gate", "parse_grader",
           "parse_graders", "reward", "rewards", "score_all", "score_batch", "split_spec_list"]
