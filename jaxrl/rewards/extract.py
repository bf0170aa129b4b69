"""Finding the final answer in a completion, and the study's format check.

Everything here runs in linear time on any input (no backtracking regular expressions over model
output), because completions are untrusted and may be megabytes of adversarial text.
"""

from __future__ import annotations

import re

BOXED_COMMANDS = ("\\boxed", "\\fbox")

# The study's format reward, kept verbatim for reference and for the equivalence test; matching
# goes through `matches_format`, which decides the same thing in linear time.
FORMAT_PATTERN = r"^<think>\n.*?\n</think>\n<answer>\n.*?\n</answer>$"
FORMAT_FLAGS = re.DOTALL | re.MULTILINE

_BOXED_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"[{}]")


def _closing_braces(text: str) -> dict[int, int]:
    """Index of each balanced `{` -> index of its matching `}` (one pass with a stack)."""
    stack: list[int] = []
    closing: dict[int, int] = {}
    for m in _BRACE.finditer(text):
        i = m.start()
        if text[i] == "{":
            stack.append(i)
        elif stack:
            closing[stack.pop()] = i
    return closing


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`) whose braces close, or None.

    Nested braces are kept: `\\boxed{\\frac{1}{2}}` -> `\\frac{1}{2}`.
    """
    opens = [m.end() - 1 for m in _BOXED_OPEN.finditer(text)]
    if not opens:
        return None
    closing = _closing_braces(text)
    for start in reversed(opens):
        end = closing.get(start)
        if end is not None:
            return text[start + 1 : end]
    return None


def answer_block(text: str) -> str | None:
    """The stripped content of the last `<answer>...</answer>` block, or None."""
    end = text.rfind("</answer>")
    if end < 0:
        return None
    start = text.rfind("<answer>", 0, end)
    if start < 0:
        return None
    return text[start + len("<answer>") : end].strip()


def final_answer(text: str) -> tuple[str, str] | None:
    """The completion's final answer as (kind, text): the last boxed answer ("boxed") if any, else
    the `<answer>` block ("answer_block") if any, else None."""
    boxed = last_boxed(text)
    if boxed is not None:
        return "boxed", boxed
    block = answer_block(text)
    if block:
        # A boxed answer inside the block was already found above; this is plain text.
        return "answer_block", block
    return None


def matches_format(text: str) -> bool:
    """Whether `re.match(FORMAT_PATTERN, text, DOTALL | MULTILINE)` succeeds, in linear time.

    The pattern matches iff the text starts with "<think>\\n", a later "\\n</think>\\n<answer>\\n"
    follows, and after that a "\\n</answer>" sits at the end of the text or before a newline
    (MULTILINE `$`). Taking the earliest middle leaves the most room for the end, so one forward
    and one backward search decide it.
    """
    head, middle, tail = "<think>\n", "\n</think>\n<answer>\n", "\n</answer>"
    if not text.startswith(head):
        return False
    mid = text.find(middle, len(head))
    if mid < 0:
        return False
    earliest_tail = mid + len(middle)
    end = len(text)
    while True:
        j = text.rfind(tail, earliest_tail, end)
        if j < 0:
            return False
        after = j + len(tail)
        if after == len(text) or text[after] == "\n":
            return True
        end = j + len(tail) - 1  # look further left, never rescanning this occurrence
