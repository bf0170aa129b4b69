"""Rewards shared by GRPO and evaluation: answer extraction, time-bounded math verification,
reward functions with TRL's signature, their registry, and the weighted sum.

- `extract`: `last_boxed`, `answer_block`, `final_answer`, `matches_format` (linear time).
- `verify`: `MathVerifier` (a pool of math-verify worker processes with per-item deadlines).
- `functions`: `Accuracy`, `format_reward`, `register_reward`, `get_reward`, `RewardScorer`.
"""

from jaxrl.rewards.extract import FORMAT_PATTERN, answer_block, final_answer, last_boxed, matches_format
from jaxrl.rewards.functions import (
    REWARDS,
    Accuracy,
    RewardScorer,
    Scores,
    format_reward,
    get_reward,
    gold_answer,
    register_reward,
)
from jaxrl.rewards.verify import VERDICTS, MathVerifier, default_verifier, set_default_verifier

__all__ = [
    "FORMAT_PATTERN",
    "REWARDS",
    "VERDICTS",
    "Accuracy",
    "MathVerifier",
    "RewardScorer",
    "Scores",
    "answer_block",
    "default_verifier",
    "final_answer",
    "format_reward",
    "get_reward",
    "gold_answer",
    "last_boxed",
    "matches_format",
    "register_reward",
    "set_default_verifier",
]
