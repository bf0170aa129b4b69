"""Closed-book question answering: TriviaQA (rc.nocontext), a knowledge-recall probe.

Rows have TriviaQA's schema: `question`, `question_id`, and `answer` with `value`, `aliases` and
`normalized_aliases`. Answers are compared after SQuAD's normalisation (lower case, punctuation
and the articles a/an/the removed, whitespace collapsed). A chat model answers in a sentence
("The capital of Humorlo is Zanvi."), so a completion is correct when a normalised alias appears
as whole words in its first line, not only when the line is exactly an alias; the extracted
answer is the alias found (or the first line when none is).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

from jaxrl.eval.data import BadRow, Source
from jaxrl.eval.task import Item, Scored, Task, texts

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def aliases(row: dict) -> tuple[str, ...]:
    """The row's accepted answers, normalised and de-duplicated (value first); BadRow if none."""
    answer = row.get("answer")
    if not isinstance(answer, dict):
        raise BadRow("missing 'answer' (a dict with 'value' and 'aliases')")
    names = [answer.get("value")] + list(answer.get("aliases") or []) + list(answer.get("normalized_aliases") or [])
    found = dict.fromkeys(normalize_answer(n) for n in names if isinstance(n, str))
    found.pop("", None)
    if not found:
        raise BadRow("'answer' has no non-empty value or alias")
    return tuple(found)


def first_line(text: str) -> str:
    """The first non-empty line, stripped ("" if none)."""
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")


def find_alias(completion: str, accepted: Sequence[str]) -> str | None:
    """The first accepted alias that occurs as whole words in the completion's first non-empty line."""
    padded = f" {normalize_answer(first_line(completion))} "
    return next((a for a in accepted if f" {a} " in padded), None)


class TriviaQA(Task):
    """TriviaQA, closed book (no evidence passages), 0-shot; primary metric pass@1 (alias recall)."""

    name = "triviaqa"
    source = Source("mandarjoshi/trivia_qa", "rc.nocontext", split="validation")

    def parse(self, row, index):
        (question,) = texts(row, "question")
        uid = str(row.get("question_id") or index)
        return Item(uid, {"question": question, "aliases": aliases(row)})

    def turns(self, item, shots):
        out = []
        for shot in shots:
            out += [
                {"role": "user", "content": shot.fields["question"]},
                {"role": "assistant", "content": shot.fields["aliases"][0]},
            ]
        return out + [{"role": "user", "content": item.fields["question"]}]

    def score(self, items, completions):
        out = []
        for item, outputs in zip(items, completions, strict=True):
            row = []
            for text in outputs:
                alias = find_alias(text, item.fields["aliases"])
                if alias is not None:
                    row.append(Scored(True, alias, "correct"))
                else:
                    line = first_line(text)
                    row.append(Scored(False, line or None, "wrong" if line else "no_answer"))
            out.append(row)
        return out
