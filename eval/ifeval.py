"""IFEval: the verifiable-instruction checkers, written here, and the task that uses them.

Each checker takes the response and the row's keyword arguments for that instruction (None values
dropped, as the released dataset pads every kwargs dict with all keys) and says whether the
response follows it, strictly (the response as is). 24 of IFEval's 25 instruction ids have a
checker; `language:response_language` needs a language detector and has none, so a prompt that
carries it is skipped and counted as "unsupported instruction ...", never guessed. The two case
checkers test the case only (the original also runs a language detector on the response).
Word and sentence counts use simple tokenisers (runs of word characters; sentence ends . ! ? before a space),
close to but not the same as the original's nltk ones.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from jaxrl.eval.data import BadRow, Source
from jaxrl.eval.task import Item, Scored, Task, required, texts

CHECKERS: dict[str, Callable[..., bool]] = {}


def checker(instruction_id: str):
    def register(fn):
        CHECKERS[instruction_id] = fn
        return fn

    return register


def _compare(count: int, relation: str, target: int) -> bool:
    if relation == "less than":
        return count < target
    if relation == "at least":
        return count >= target
    raise ValueError(f"unknown relation {relation!r}; IFEval uses 'less than' or 'at least'")


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text)


def _sentences(text: str) -> list[str]:
    """Sentences end at . ! or ? followed by whitespace or the end (abbreviations not handled)."""
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if re.search(r"\w", s)]


# --- keywords -------------------------------------------------------------------------------


@checker("keywords:existence")
def keywords_existence(response, *, keywords):
    return all(re.search(re.escape(k), response, re.IGNORECASE) for k in keywords)


@checker("keywords:frequency")
def keywords_frequency(response, *, keyword, frequency, relation):
    count = len(re.findall(re.escape(keyword), response, re.IGNORECASE))
    return _compare(count, relation, frequency)


@checker("keywords:forbidden_words")
def keywords_forbidden(response, *, forbidden_words):
    return not any(re.search(r"\b" + re.escape(w) + r"\b", response, re.IGNORECASE) for w in forbidden_words)


@checker("keywords:letter_frequency")
def keywords_letter_frequency(response, *, letter, let_frequency, let_relation):
    return _compare(response.lower().count(letter.lower()), let_relation, let_frequency)


# --- length constraints ---------------------------------------------------------------------


@checker("length_constraints:number_words")
def number_words(response, *, num_words, relation):
    return _compare(len(_words(response)), relation, num_words)


@checker("length_constraints:number_sentences")
def number_sentences(response, *, num_sentences, relation):
    return _compare(len(_sentences(response)), relation, num_sentences)


@checker("length_constraints:number_paragraphs")
def number_paragraphs(response, *, num_paragraphs):
    """Paragraphs are separated by the markdown divider ***; an empty one fails unless it is the
    first or the last (a leading or trailing divider)."""
    parts = [p.strip() for p in re.split(r"\s?\*\*\*\s?", response)]
    if parts and not parts[0]:
        parts = parts[1:]
    if parts and not parts[-1]:
        parts = parts[:-1]
    return all(parts) and len(parts) == num_paragraphs


@checker("length_constraints:nth_paragraph_first_word")
def nth_paragraph_first_word(response, *, num_paragraphs, nth_paragraph, first_word):
    """Paragraphs are separated by blank lines; the n-th (1-based) starts with `first_word`."""
    parts = [p.strip() for p in re.split(r"\n\s*\n", response.strip()) if p.strip()]
    if len(parts) != num_paragraphs or not 1 <= nth_paragraph <= len(parts):
        return False
    words = _words(parts[nth_paragraph - 1])
    return bool(words) and words[0].lower() == first_word.strip().lower()


# --- detectable content and format ----------------------------------------------------------


@checker("detectable_content:number_placeholders")
def number_placeholders(response, *, num_placeholders):
    return len(re.findall(r"\[[^\[\]\n]+\]", response)) >= num_placeholders


@checker("detectable_content:postscript")
def postscript(response, *, postscript_marker):
    """A line starting with the marker; "P. S." and "p.s." count for "P.S." (spacing and case free)."""
    marker = re.escape(postscript_marker.strip()).replace(r"\ ", r"\s*").replace(r"\.", r"\.\s?")
    return re.search(r"^\s*" + marker, response, re.IGNORECASE | re.MULTILINE) is not None


@checker("detectable_format:number_bullet_lists")
def number_bullet_lists(response, *, num_bullets):
    """Markdown bullets: lines starting with `* ` or `- ` (not `**bold**`)."""
    bullets = re.findall(r"^\s*(?:\*(?!\*)|-)\s+\S", response, re.MULTILINE)
    return len(bullets) == num_bullets


@checker("detectable_format:constrained_response")
def constrained_response(response):
    options = ("My answer is yes.", "My answer is no.", "My answer is maybe.")
    return any(o in response.strip() for o in options)


@checker("detectable_format:number_highlighted_sections")
def number_highlighted_sections(response, *, num_highlights):
    """Markdown *highlights* (or **bold**) with some text inside."""
    spans = re.findall(r"\*\*([^\n*]+)\*\*|\*([^\n*]+)\*", response)
    return sum(1 for a, b in spans if (a or b).strip()) >= num_highlights


@checker("detectable_format:multiple_sections")
def multiple_sections(response, *, section_spliter, num_sections):
    """Sections start with `{spliter} {n}`, e.g. `SECTION 1`."""
    starts = re.findall(r"\s?" + re.escape(section_spliter.strip()) + r"\s?\d+\s?", response)
    return len(starts) >= num_sections


@checker("detectable_format:json_format")
def json_format(response):
    text = response.strip()
    fenced = re.fullmatch(r"```(?:json|JSON|Json)?\s*(.*?)\s*```", text, re.DOTALL)
    try:
        json.loads(fenced.group(1) if fenced else text)
    except ValueError:
        return False
    return True


@checker("detectable_format:title")
def title(response):
    return any(t.strip() for t in re.findall(r"<<([^\n]+?)>>", response))


# --- combinations, case, punctuation, start and end ------------------------------------------


@checker("combination:two_responses")
def two_responses(response):
    parts = [p.strip() for p in response.split("******")]
    return len(parts) == 2 and all(parts) and parts[0] != parts[1]


@checker("combination:repeat_prompt")
def repeat_prompt(response, *, prompt_to_repeat):
    return response.strip().lower().startswith(prompt_to_repeat.strip().lower())


@checker("change_case:english_lowercase")
def english_lowercase(response):
    return response == response.lower() and any(ch.isalpha() for ch in response)


@checker("change_case:english_capital")
def english_capital(response):
    return response == response.upper() and any(ch.isalpha() for ch in response)


@checker("change_case:capital_word_frequency")
def capital_word_frequency(response, *, capital_frequency, capital_relation):
    capitals = [w for w in _words(response) if w.isupper()]
    return _compare(len(capitals), capital_relation, capital_frequency)


@checker("punctuation:no_comma")
def no_comma(response):
    return "," not in response


@checker("startend:end_checker")
def end_checker(response, *, end_phrase):
    return response.strip().lower().endswith(end_phrase.strip().lower())


@checker("startend:quotation")
def quotation(response):
    text = response.strip()
    return len(text) > 1 and text.startswith('"') and text.endswith('"')


# --- entry points -----------------------------------------------------------------------------


def clean_kwargs(kwargs: dict | None) -> dict:
    """The dataset pads every kwargs dict with all keys set to None; keep the given ones."""
    return {k: v for k, v in (kwargs or {}).items() if v is not None}


def bad_arguments(instruction_id: str, kwargs: dict) -> str | None:
    """Why `kwargs` cannot drive this instruction's checker (tried on an empty response), or None."""
    fn = CHECKERS[instruction_id]
    try:
        fn("", **kwargs)
    except (TypeError, ValueError, AttributeError, re.error) as e:
        return f"bad kwargs for {instruction_id}: {e}"
    return None


def check(response: str, instruction_ids: list[str], kwargs_list: list[dict]) -> list[bool]:
    """Whether `response` follows each instruction (every id must have a checker)."""
    return [CHECKERS[i](response, **clean_kwargs(kw)) for i, kw in zip(instruction_ids, kwargs_list, strict=True)]


class IFEval(Task):
    """IFEval: key, prompt, instruction_id_list, kwargs. A completion is correct at the prompt
    level when it follows every instruction of its prompt; `Scored.parts` holds the
    per-instruction results for the instruction-level accuracy."""

    name = "ifeval"
    source = Source("google/IFEval", split="train")
    primary = "prompt_strict"
    votes = False

    def parse(self, row, index):
        (prompt,), (ids,) = texts(row, "prompt"), required(row, "instruction_id_list")
        kwargs_list = row.get("kwargs") or [{} for _ in ids]
        lists = isinstance(ids, list) and isinstance(kwargs_list, list) and len(ids) == len(kwargs_list)
        if not lists or not all(isinstance(i, str) for i in ids) or not all(isinstance(k, dict) for k in kwargs_list):
            raise BadRow("'instruction_id_list' and 'kwargs' are not lists (of ids, of dicts) of the same length")
        kwargs_list = [clean_kwargs(kw) for kw in kwargs_list]
        for instruction_id, kwargs in zip(ids, kwargs_list, strict=True):
            if instruction_id not in CHECKERS:
                raise BadRow(f"unsupported instruction {instruction_id}")
            if why := bad_arguments(instruction_id, kwargs):
                raise BadRow(why)
        return Item(str(row.get("key", index)), {"prompt": prompt, "ids": list(ids), "kwargs": kwargs_list})

    def turns(self, item, shots):
        return [{"role": "user", "content": item.fields["prompt"]}]

    def score(self, items, completions):
        out = []
        for item, outputs in zip(items, completions, strict=True):
            row = []
            for text in outputs:
                parts = tuple(check(text, item.fields["ids"], item.fields["kwargs"]))
                row.append(Scored(all(parts), None, "followed" if all(parts) else "not_followed", parts))
            out.append(row)
        return out
