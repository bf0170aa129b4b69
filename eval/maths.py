"""Maths benchmarks: MATH-500 and AIME24 (0-shot), GSM8K (k-shot, `#### N` answers).

A completion's answer is its last `\\boxed{}` or else its `<answer>` block (the shared extractor
in `jaxrl.rewards.extract`); GSM8K also accepts "The answer is N", "#### N" or, last of all, the
last number in the text, as k-shot GSM8K answers are written that way. Answers are judged by the
shared time-bounded math-verify pool (`jaxrl.rewards.verify`), the one GRPO's reward uses.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from jaxrl.eval.data import BadRow, Source
from jaxrl.eval.task import Item, Scored, Task, texts

# Numbers start with a digit and nothing after it can fail, so these never backtrack far.
_NUM = r"-?\d[\d,]*(?:\.\d+)?"
# "answer is N", and the rest of its sentence (a "." that starts no decimal ends it)
_ANSWER_IS = re.compile(r"answer is[:\s]*\$?(" + _NUM + r")((?:[^.\n]|\.\d)*)", re.IGNORECASE)
_OPERATOR = re.compile(r"\s*[-+*/×÷^x]")
_EQUALS = re.compile(r"=\s*\$?(" + _NUM + ")")
_HASHES = re.compile(r"####\s*\$?(" + _NUM + ")")
_NUMBER = re.compile(_NUM)
_CALCULATOR = re.compile(r"<<[^<>]*>>")


def plain_number(answer: str) -> str:
    """A plain decimal written canonically ("007" -> "7", "10.50" -> "10.5", "3.0" -> "3"), as the
    shared verifier judges "5.0" against "5" wrong; any other answer is returned as is."""
    m = re.fullmatch(r"\s*(-?)0*(\d+?)(?:\.(\d*?)0*)?\s*", answer) if len(answer) <= 100 else None
    if m is None:
        return answer
    sign, whole, frac = m.group(1), m.group(2), m.group(3)
    text = whole + (f".{frac}" if frac else "")
    return "0" if text == "0" else sign + text


def extract_math(text: str) -> tuple[str, bool] | None:
    """(answer, is_boxed) of a completion by the shared extractor, or None."""
    from jaxrl.rewards.extract import final_answer

    found = final_answer(text)
    if found is None:
        return None
    kind, answer = found
    return plain_number(answer), kind == "boxed"


def extract_number(text: str) -> str | None:
    """A GSM8K-style final number: "answer is N" (or the result N of "answer is 5 * 4 = N"),
    "#### N", else the last number; commas dropped."""
    found = _answer_is(text)
    if found is None:
        hashes = _HASHES.findall(text)
        found = hashes[-1] if hashes else None
    if found is None:
        numbers = _NUMBER.findall(text)
        found = numbers[-1] if numbers else None
    return None if found is None else plain_number(found.replace(",", ""))


def _answer_is(text: str) -> str | None:
    """The number of the last "answer is" sentence: the one after its last "=" when an expression
    follows the first number ("So the answer is 5 * 4 = 20." -> 20), else the first number."""
    matches = _ANSWER_IS.findall(text)
    if not matches:
        return None
    first, rest = matches[-1]
    results = _EQUALS.findall(rest) if _OPERATOR.match(rest) else []
    return results[-1] if results else first


def gold(row: dict) -> str:
    """The row's `answer` as GRPO's accuracy reward reads a gold (`rewards.gold_answer`: a boxed
    answer inside it if any, else its text); plain numbers written canonically."""
    from jaxrl.rewards.functions import gold_answer

    if row.get("answer") is None:
        raise BadRow("missing 'answer'")
    answer = gold_answer(row, "answer")
    if answer is None:
        raise BadRow("'answer' is empty or not text")
    return plain_number(answer)


def judge(golds: Sequence[str], answers: Sequence[tuple[str, bool] | None]) -> list[Scored]:
    """Scores of extracted answers against gold answers through the shared math verifier."""
    from jaxrl.rewards.verify import default_verifier

    asked = [(g, a[0], a[1]) for g, a in zip(golds, answers, strict=True) if a is not None]
    verdicts = iter(default_verifier().judge(asked) if asked else [])
    out = []
    for answer in answers:
        if answer is None:
            out.append(Scored(False, None, "no_answer"))
        else:
            verdict = next(verdicts)
            out.append(Scored(verdict == "correct", answer[0], verdict))
    return out


class _MathTask(Task):
    """A problem answered by a number or expression, judged by math-verify."""

    def extract(self, text: str) -> tuple[str, bool] | None:
        return extract_math(text)

    def score(self, items, completions):
        golds, answers = [], []
        for item, outputs in zip(items, completions, strict=True):
            for text in outputs:
                golds.append(item.fields["answer"])
                answers.append(self.extract(text))
        flat = iter(judge(golds, answers))
        return [[next(flat) for _ in outputs] for outputs in completions]


class Math500(_MathTask):
    """MATH-500: problem, solution, answer, subject, level, unique_id."""

    name = "math500"
    source = Source("HuggingFaceH4/MATH-500", split="test")

    def parse(self, row, index):
        (problem,) = texts(row, "problem")
        solution = row.get("solution") if isinstance(row.get("solution"), str) else ""
        uid = str(row.get("unique_id") or index)
        fields = {"problem": problem, "answer": gold(row), "solution": solution}
        return Item(uid, fields, str(row.get("subject") or ""))

    def turns(self, item, shots):
        return [{"role": "user", "content": item.fields["problem"]}]


class AIME24(_MathTask):
    """AIME 2024: id, problem, solution, answer (an integer 0-999)."""

    name = "aime24"
    source = Source("HuggingFaceH4/aime_2024", split="train")

    def parse(self, row, index):
        (problem,) = texts(row, "problem")
        return Item(str(row.get("id", index)), {"problem": problem, "answer": gold(row)})

    def turns(self, item, shots):
        return [{"role": "user", "content": item.fields["problem"]}]


def split_gsm8k_answer(answer: str) -> tuple[str, str]:
    """GSM8K's answer field -> (reasoning without calculator marks, final number without commas)."""
    if "####" not in answer:
        raise BadRow("answer has no '#### N' final line")
    reasoning, _, final = answer.rpartition("####")
    final = final.strip().replace(",", "")
    if not re.fullmatch(r"-?\d+(\.\d+)?", final):
        raise BadRow(f"final answer after '####' is not a number: {final[:40]!r}")
    return _CALCULATOR.sub("", reasoning).strip(), plain_number(final)


class GSM8K(_MathTask):
    """GSM8K: question, answer ("...reasoning...\\n#### 72"); k-shot from the train split."""

    name = "gsm8k"
    source = Source("openai/gsm8k", "main", split="test")
    shot_source = Source("openai/gsm8k", "main", split="train")
    num_shots = 5

    def parse(self, row, index):
        question, answer = texts(row, "question", "answer")
        reasoning, final = split_gsm8k_answer(answer)
        return Item(str(index), {"question": question, "reasoning": reasoning, "answer": final})

    def turns(self, item, shots):
        out = []
        for shot in shots:
            worked = f"{shot.fields['reasoning']}\nThe answer is {shot.fields['answer']}."
            out += [{"role": "user", "content": shot.fields["question"]}, {"role": "assistant", "content": worked}]
        return out + [{"role": "user", "content": item.fields["question"]}]

    def extract(self, text):
        found = extract_math(text)
        if found is not None:
            return found
        number = extract_number(text)
        return None if number is None else (number, True)
