"""Multiple-choice benchmarks: GPQA-Diamond (0-shot, options shuffled with a seed), MMLU (5-shot,
generative or by the log-likelihood of the choice letter) and MMLU-Pro (5-shot chain of thought).

A generative answer is a letter found, in this order, in the last `\\boxed{}`, the `<answer>`
block, the last "answer is (X)", or a completion that is only a letter; anything else is
"no_answer" (a stray capital "A" in prose is never taken for a choice).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from jaxrl.eval.data import BadRow, Source
from jaxrl.eval.task import Item, Scored, Task, texts

LETTERS = "ABCDEFGHIJ"

_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm)\{([^{}]*)\}")
_ANSWER_IS = re.compile(r"answer is\s*:?\s*\(?([A-J])\)?(?![A-Za-z])", re.IGNORECASE)


def _leading_letter(text: str, letters: str) -> str | None:
    """The letter a short answer such as "B", "(B)", "B)", "B. Paris" or "\\text{B}" gives."""
    text = _TEXT_WRAPPER.sub(r"\1", text).strip().lstrip("*$ ").strip()
    m = re.match(r"\(?([A-J])\)?(?:$|[\s.:)*$])", text)
    if m and m.group(1) in letters:
        return m.group(1)
    m = _ANSWER_IS.search(text)
    return m.group(1).upper() if m and m.group(1).upper() in letters else None


def extract_letter(text: str, num_options: int) -> str | None:
    """The chosen option letter of a completion among the first `num_options` letters, or None."""
    from jaxrl.rewards.extract import answer_block, last_boxed

    letters = LETTERS[:num_options]
    for part in (last_boxed(text), answer_block(text)):
        if part is not None and (letter := _leading_letter(part, letters)):
            return letter
    said = [m.group(1).upper() for m in _ANSWER_IS.finditer(text)]
    said = [s for s in said if s in letters]
    if said:
        return said[-1]
    stripped = text.strip()
    return _leading_letter(stripped, letters) if len(stripped) <= 4 else None


def _letter_at(index) -> str | None:
    try:
        return LETTERS[int(index)] if int(index) >= 0 else None
    except (TypeError, ValueError, IndexError):
        return None


def format_options(options: Sequence[str]) -> str:
    return "\n".join(f"{LETTERS[i]}) {option}" for i, option in enumerate(options))


class _ChoiceTask(Task):
    """Items carry `options` (list of str) and `gold` (a letter)."""

    instruction = "Answer with the letter of the correct option."

    def question_text(self, item: Item) -> str:
        return f"{item.fields['question']}\n\n{format_options(item.fields['options'])}\n\n{self.instruction}"

    def score(self, items, completions):
        out = []
        for item, outputs in zip(items, completions, strict=True):
            row = []
            for text in outputs:
                letter = extract_letter(text, len(item.fields["options"]))
                if letter is None:
                    row.append(Scored(False, None, "no_answer"))
                else:
                    ok = letter == item.fields["gold"]
                    row.append(Scored(ok, letter, "correct" if ok else "wrong"))
            out.append(row)
        return out


class GPQADiamond(_ChoiceTask):
    """GPQA-Diamond: Question, Correct Answer, Incorrect Answer 1-3; options shuffled per item by
    `seed` (the same seed gives the same order for every model)."""

    name = "gpqa_diamond"
    source = Source("Idavidrein/gpqa", "gpqa_diamond", split="train")

    def __init__(self, seed: int = 0):
        self.seed = seed

    def parse(self, row, index):
        names = ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
        question, correct, *wrong = (v.strip() for v in texts(row, *names, numbers=True))
        if len({correct, *wrong}) < 4:
            raise BadRow("two of the four options are the same text")
        item_id = str(row.get("Record ID") or index)
        options = [correct, *wrong]
        random.Random(f"{self.seed}:{item_id}").shuffle(options)
        gold = LETTERS[options.index(correct)]
        return Item(item_id, {"question": question, "options": options, "gold": gold})

    def turns(self, item, shots):
        return [{"role": "user", "content": self.question_text(item)}]


def parse_mmlu(row: dict, index: int) -> Item:
    """MMLU: question, subject, choices (4 strings), answer (index 0-3)."""
    (question,) = texts(row, "question")
    choices, answer = row.get("choices"), row.get("answer")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise BadRow("'choices' is not a list of at least two strings")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise BadRow(f"'answer' must be an index into choices; got {answer!r}")
    fields = {"question": question, "options": list(choices), "gold": LETTERS[answer]}
    return Item(str(index), fields, str(row.get("subject") or ""))


def subject_header(subject: str) -> str:
    topic = subject.replace("_", " ").strip()
    return f"The following is a multiple choice question about {topic}." if topic else ""


class MMLU(_ChoiceTask):
    """MMLU, generative: 5-shot from the dev split, shots answered "The answer is (X)."."""

    name = "mmlu"
    source = Source("cais/mmlu", "all", split="test")
    shot_source = Source("cais/mmlu", "all", split="dev")
    num_shots = 5

    def parse(self, row, index):
        return parse_mmlu(row, index)

    def question_text(self, item):
        header = subject_header(item.group)
        return (header + "\n\n" if header else "") + super().question_text(item)

    def shot_answer(self, item: Item) -> str:
        return f"The answer is ({item.fields['gold']})."

    def turns(self, item, shots):
        out = []
        for shot in shots:
            out += [
                {"role": "user", "content": self.question_text(shot)},
                {"role": "assistant", "content": self.shot_answer(shot)},
            ]
        return out + [{"role": "user", "content": self.question_text(item)}]


class MMLULogLik(MMLU):
    """MMLU by log-likelihood: the answer is the letter with the highest log-probability as the
    start of the assistant's reply; the shots reply with the bare letter."""

    name = "mmlu_loglik"
    data_of = "mmlu"
    kind = "loglik"
    primary = "accuracy"
    instruction = "Answer with the letter of the correct option only."

    def shot_answer(self, item):
        return item.fields["gold"]

    def continuations(self, item: Item) -> list[str]:
        return list(LETTERS[: len(item.fields["options"])])


class MMLUPro(_ChoiceTask):
    """MMLU-Pro: question_id, question, options (up to 10), answer (letter), answer_index,
    cot_content, category; 5-shot chain of thought from the validation split."""

    name = "mmlu_pro"
    source = Source("TIGER-Lab/MMLU-Pro", split="test")
    shot_source = Source("TIGER-Lab/MMLU-Pro", split="validation")
    num_shots = 5
    instruction = 'Think step by step and then finish your answer with "The answer is (X)" where X is the letter.'

    def parse(self, row, index):
        question, answer = texts(row, "question", "answer")
        options = row.get("options")
        if (
            not isinstance(options, list)
            or not 2 <= len(options) <= len(LETTERS)
            or not all(isinstance(o, str) for o in options)
        ):
            raise BadRow("'options' is not a list of 2 to 10 strings")
        answer = answer.strip()
        if answer not in LETTERS[: len(options)]:
            raise BadRow(f"'answer' {answer!r} is not the letter of an option")
        index_field = row.get("answer_index")
        if index_field is not None and _letter_at(index_field) != answer:
            raise BadRow(f"'answer' {answer!r} disagrees with 'answer_index' {index_field}")
        cot = str(row.get("cot_content") or "").strip()
        cot = cot[2:].strip() if cot.startswith("A:") else cot
        fields = {"question": question, "options": list(options), "gold": answer, "cot": cot}
        return Item(str(row.get("question_id", index)), fields, str(row.get("category") or ""))

    def question_text(self, item):
        header = subject_header(item.group)
        return (header + "\n\n" if header else "") + super().question_text(item)

    def turns(self, item, shots):
        out = []
        for shot in shots:
            worked = shot.fields["cot"] or f"The answer is ({shot.fields['gold']})."
            out += [{"role": "user", "content": self.question_text(shot)}, {"role": "assistant", "content": worked}]
        return out + [{"role": "user", "content": self.question_text(item)}]
