"""The benchmarks by name."""

from __future__ import annotations

from jaxrl.eval.choice import MMLU, GPQADiamond, MMLULogLik, MMLUPro
from jaxrl.eval.ifeval import IFEval
from jaxrl.eval.maths import AIME24, GSM8K, Math500
from jaxrl.eval.qa import TriviaQA
from jaxrl.eval.task import Task

from jaxrl.errors import JaxrlError

TASKS: dict[str, type[Task]] = {
    t.name: t for t in (AIME24, Math500, GSM8K, GPQADiamond, MMLU, MMLULogLik, MMLUPro, IFEval, TriviaQA)
}
# The study's table, in its order.
STUDY_TASKS = ("aime24", "math500", "gsm8k", "gpqa_diamond", "mmlu", "mmlu_pro", "ifeval")


def make_task(name: str, seed: int = 0) -> Task:
    """A task by name; `seed` fixes GPQA's option order."""
    if name not in TASKS:
        raise JaxrlError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name](seed) if name == GPQADiamond.name else TASKS[name]()


def parse_task_list(text: str) -> list[str]:
    """'math500,gsm8k' -> names (checked); 'study' -> the study's seven; 'all' -> every task."""
    if text.strip() == "study":
        return list(STUDY_TASKS)
    if text.strip() == "all":
        return list(TASKS)
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise JaxrlError("--tasks is empty; name tasks like math500,gsm8k (or 'study', 'all')")
    for name in names:
        make_task(name)
    return names
