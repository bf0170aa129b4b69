"""The process that runs math-verify, one (gold, answer) pair at a time.

It runs as a script (`python verify_worker.py`), imports only math-verify (never jax or jaxrl), and
talks JSON lines over its stdin/stdout: it sends ["ready"] once imported, then answers each
request [gold, answer, answer_is_boxed] with one of ["correct"], ["wrong"], ["gold_unparseable"],
["answer_unparseable"] or ["error", message].
math-verify's own signal-based time-outs are turned off (they only work in a main thread); the
parent enforces the deadline by killing this process. Model output is only ever parsed as LaTeX
(an ANTLR grammar). As a second guard, sympy's `parse_expr` (which evaluates Python; the LaTeX
converter reaches it only through `sympy.Number(digits)`, sympy's set-up with bare names) accepts
only plain numbers and names here.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import resource
import sys

# A number or a bare name (sympy's unit prefixes go through parse_expr): no call, attribute or operator.
_PLAIN_ATOM = re.compile(r"\s*(?:[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[A-Za-z_][A-Za-z0-9_]*)\s*")
_LETTER_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")
_LAST_NUMBER = re.compile(r"[+-]?\d+(?:[.,]\d+)*(?:/\d+)?")


def _numbers_only(parse_expr):
    """`parse_expr` that accepts plain numbers and bare names (all the LaTeX converter and sympy's
    own set-up pass it) and refuses anything else, so no text that could be Python is evaluated."""

    def guarded(s, *args, **kwargs):
        if isinstance(s, str) and _PLAIN_ATOM.fullmatch(s):
            return parse_expr(s, *args, **kwargs)
        raise ValueError("only plain numbers are parsed by sympy in the verifier")

    return guarded


@functools.lru_cache(maxsize=4096)
def _parse(text: str, without_anchor: bool):
    from math_verify import LatexExtractionConfig, parse

    config = LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=without_anchor)
    return parse(
        text, extraction_config=[config], extraction_mode="first_match", parsing_timeout=None, raise_on_error=False
    )


def judge(gold: str, answer: str, answer_is_boxed: bool) -> tuple:
    """One verdict for a gold answer and a completion's answer (both the text inside a box, or a
    free-text answer). Runs without any time limit: call it in a worker. See the module docstring."""
    from math_verify import verify

    gold = _parse("\\boxed{" + gold + "}", False)
    if not gold:
        return ("gold_unparseable",)
    if answer_is_boxed:
        answer = _parse("\\boxed{" + answer + "}", False)
    else:  # free text: its own $...$ or \boxed if any, else the whole text as one formula when it
        # has no words in it, else its last number ("The answer is 5" -> 5)
        parsed = _parse(answer, True)
        if not parsed and not _LETTER_WORD.search(answer):
            parsed = _parse("$" + answer + "$", True)
        if not parsed:
            numbers = _LAST_NUMBER.findall(answer)
            parsed = _parse("$" + numbers[-1] + "$", True) if numbers else []
        answer = parsed
    if not answer:
        return ("answer_unparseable",)
    ok = verify(gold, answer, timeout_seconds=None, raise_on_error=True)
    return ("correct",) if ok else ("wrong",)


def serve() -> None:
    """The worker's main loop: JSON lines in on stdin, JSON lines out on the original stdout."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else that prints goes to stderr, never into the protocol
    memory_limit = int(os.environ.get("JAXRL_VERIFIER_MEMORY_BYTES", "0"))
    if memory_limit:
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    logging.disable(logging.WARNING)
    import math_verify.parser
    import sympy.parsing.sympy_parser

    math_verify.parser.parse_expr = _numbers_only(math_verify.parser.parse_expr)
    sympy.parsing.sympy_parser.parse_expr = _numbers_only(sympy.parsing.sympy_parser.parse_expr)
    protocol.write(json.dumps(["ready"]) + "\n")
    for line in sys.stdin:
        try:
            reply = list(judge(*json.loads(line)))
        except MemoryError:
            reply = ["error", "out of memory"]
        except Exception as e:  # a verifier bug must cost one sample, never the run
            reply = ["error", f"{type(e).__name__}: {str(e)[:200]}"]
        protocol.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    serve()
