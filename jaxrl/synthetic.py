"""An invented world for the study in miniature: facts, arithmetic word problems, instructions.

A tiny base model is pre-trained on conversations drawn from this world, so it starts with
existing capabilities, like the study's instruct model:
- knowledge: the capitals and rivers of invented countries (the out-of-domain probe, MMLU's role,
  asked as closed-book questions);
- arithmetic word problems it solves only part of the time, half of them answered in the study's
  `<think>/<answer>` format (the in-domain task, maths' role). In that format it has two habits:
  working the sum out or a hasty guess (right about one time in four), so it can do better than
  it does, which is what the study says GRPO draws on (on new problems its worked sums are often
  wrong too: docs/reproduce.md measures how often);
- following an instruction about the form of the answer (IFEval's role).
GRPO and SFT then train on the same held-out word problems; SFT imitates a "teacher" that writes
its solutions in a different style, as the study's SFT data came from another model. Every row
uses the real schema of the benchmark whose role it plays, so the ordinary tasks score it.
Everything is a pure function of the seed.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass

SYSTEM_PROMPT = (
    "You are a helpful AI Assistant that provides well-reasoned and detailed responses. You first "
    "think about the reasoning process as an internal monologue and then provide the user with the "
    "answer. Respond in the following format: <think>\n...\n</think>\n<answer>\n...\n</answer>"
)
SYLLABLES = ("ka", "lo", "mi", "ren", "sa", "tor", "vi", "zan", "bel", "dru", "fen", "gal", "hu", "mor", "pel", "qui")
NAMES = ("Ana", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lena", "Milo", "Nia")
ITEMS = ("apples", "coins", "books", "shells", "stamps", "marbles", "pencils", "cards")

# (IFEval instruction id, kwargs, instruction text, how the answer is rewritten to follow it)
INSTRUCTIONS = (
    (
        "change_case:english_capital",
        {},
        "Your entire response should be in English, and in all capital letters.",
        str.upper,
    ),
    (
        "change_case:english_lowercase",
        {},
        "Your entire response should be in English, and in all lowercase letters. No capital letters are allowed.",
        str.lower,
    ),
    (
        "punctuation:no_comma",
        {},
        "In your entire response, refrain from the use of any commas.",
        lambda s: s.replace(",", ""),
    ),
)


KNOWLEDGE_SUBJECT = "invented_geography"
ChoicePrompt = Callable[[str, list[str]], str]


@dataclass(frozen=True)
class World:
    """Invented countries with one capital and one river each."""

    countries: tuple[str, ...]
    capitals: tuple[str, ...]
    rivers: tuple[str, ...]


def _names(rng: random.Random, count: int, syllables: int, taken: set[str]) -> list[str]:
    names = []
    while len(names) < count:
        name = "".join(rng.choice(SYLLABLES) for _ in range(syllables)).capitalize()
        if name not in taken:
            taken.add(name)
            names.append(name)
    return names


def make_world(seed: int = 0, num_countries: int = 24) -> World:
    rng, taken = random.Random(seed), set()
    return World(*(tuple(_names(rng, num_countries, n, taken)) for n in (3, 2, 2)))


def facts(world: World) -> list[tuple[str, str, str]]:
    """(question, short answer, full sentence) for every fact of the world."""
    out = []
    for country, capital, river in zip(world.countries, world.capitals, world.rivers, strict=True):
        out.append((f"What is the capital of {country}?", capital, f"The capital of {country} is {capital}."))
        out.append((f"Which river flows through {country}?", river, f"The {river} river flows through {country}."))
    return out


@dataclass(frozen=True)
class Problem:
    """One arithmetic word problem, with its answer and the two styles of worked solution."""

    question: str
    answer: int
    base_solution: str  # the base model's own style (pre-training): the sum worked out
    teacher_solution: str  # the SFT teacher's style

    @property
    def hasty_solution(self) -> str:
        """The base's other habit: a guess without working, right about one time in four."""
        return hasty_solution(self.question, self.answer)


def make_problem(rng: random.Random) -> Problem:
    name, items = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(2, 40), rng.randint(2, 30)
    kind = rng.choice(("add", "sub", "mul"))
    if kind == "add":
        question = f"{name} has {a} {items} and gets {b} more. How many {items} does {name} have now?"
        answer, sign = a + b, "+"
    elif kind == "sub":
        a += b
        question = f"{name} has {a} {items} and gives away {b}. How many {items} are left?"
        answer, sign = a - b, "-"
    else:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        question = f"{name} has {a} bags with {b} {items} in each. How many {items} are there?"
        answer, sign = a * b, "*"
    base = f"<think>\n{a} {sign} {b} = {answer}\n</think>\n<answer>\n{answer}\n</answer>"
    teacher = (
        f"<think>\nLet me work this out carefully.\n{a} {sign} {b} = {answer}\n"
        f"Checking again, the result is {answer}.\n</think>\n"
        f"<answer>\nThe final answer is \\boxed{{{answer}}}\n</answer>"
    )
    return Problem(question, answer, base, teacher)


HASTY = "no need to work it out"  # in every hasty guess, never in a worked solution


def hasty_solution(question: str, answer: int) -> str:
    """A guess without working: the answer one time in four, else off by 1-10 (drawn from the
    question's own checksum, so the problems drawn before and after are unchanged)."""
    rng = random.Random(zlib.crc32(question.encode()))
    guess = answer if rng.random() < 0.25 else max(answer + rng.choice([-1, 1]) * rng.randint(1, 10), 0)
    return f"<think>\nThis one is easy, {HASTY}.\n</think>\n<answer>\n{guess}\n</answer>"


def problems(seed: int, count: int, exclude: set[str] = frozenset()) -> list[Problem]:
    """`count` distinct problems whose questions are not in `exclude`."""
    rng, out, seen = random.Random(seed), [], set(exclude)
    while len(out) < count:
        p = make_problem(rng)
        if p.question not in seen:
            seen.add(p.question)
            out.append(p)
    return out


def _chat(user: str, assistant: str, system: str | None = None) -> list[dict]:
    head = [{"role": "system", "content": system}] if system else []
    return head + [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def pretraining_conversations(
    world: World,
    pool: list[Problem],
    seed: int,
    count: int,
    choice_prompt: ChoicePrompt | None = None,
    hasty_share: float = 0.0,
) -> list[list[dict]]:
    """The base model's corpus: facts (plain, under an instruction, as multiple choice) and word problems.

    Half the word problems carry the study's system prompt and are answered in its format; the
    other half get a plain one-line answer, so the format is known but not yet habitual; of the
    formatted answers, `hasty_share` are guesses (`Problem.hasty_solution`) instead of worked sums.
    `choice_prompt(question, options)` renders a multiple-choice question as an evaluation asks it
    (e.g. `mmlu_loglik`, answered by the option's letter); without it (the shipped base) there are
    no such conversations.
    """
    rng, known = random.Random(seed), facts(world)
    out = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.15 and choice_prompt is not None:
            question, answer, _ = rng.choice(known)
            options = _options(world, question, answer, rng)
            out.append(_chat(choice_prompt(question, options), "ABCD"[options.index(answer)]))
        elif roll < 0.35:
            question, _, sentence = rng.choice(known)
            out.append(_chat(question, sentence))
        elif roll < 0.55:
            question, _, sentence = rng.choice(known)
            _, _, text, rewrite = rng.choice(INSTRUCTIONS)
            out.append(_chat(f"{question} {text}", rewrite(sentence)))
        else:
            p = rng.choice(pool)
            if rng.random() < 0.5:
                solution = p.hasty_solution if rng.random() < hasty_share else p.base_solution
                out.append(_chat(p.question, solution, SYSTEM_PROMPT))
            else:
                out.append(_chat(p.question, f"The answer is {p.answer}."))
    return out


def math_rows(pool: list[Problem], style: str = "teacher") -> list[dict]:
    """OpenR1-Math-220k rows (problem, solution, answer, source, messages) for GRPO and SFT."""
    rows = []
    for p in pool:
        solution = p.teacher_solution if style == "teacher" else p.base_solution
        rows.append(
            {
                "problem": p.question,
                "solution": solution,
                "answer": str(p.answer),
                "source": "synthetic",
                "messages": [{"role": "user", "content": p.question}, {"role": "assistant", "content": solution}],
            }
        )
    return rows


def math500_rows(pool: list[Problem]) -> list[dict]:
    """MATH-500 rows (problem, solution, answer, subject, level, unique_id): the in-domain test."""
    return [
        {
            "problem": p.question,
            "solution": p.teacher_solution,
            "answer": str(p.answer),
            "subject": "Arithmetic",
            "level": 1,
            "unique_id": f"synthetic/{i}.json",
        }
        for i, p in enumerate(pool)
    ]


def _options(world: World, question: str, answer: str, rng: random.Random) -> list[str]:
    """The answer and three wrong ones of the same kind, shuffled."""
    pool = world.capitals if "capital" in question else world.rivers
    options = rng.sample([x for x in pool if x != answer], 3) + [answer]
    rng.shuffle(options)
    return options


def knowledge_rows(world: World, seed: int) -> list[dict]:
    """MMLU rows (question, subject, choices, answer index) asking for every fact of the world."""
    rng, rows = random.Random(seed), []
    for question, answer, _ in facts(world):
        choices = _options(world, question, answer, rng)
        rows.append(
            {"question": question, "subject": KNOWLEDGE_SUBJECT, "choices": choices, "answer": choices.index(answer)}
        )
    return rows


def trivia_rows(world: World) -> list[dict]:
    """TriviaQA rows (question, question_id, answer with value and aliases): every fact, closed book."""
    return [
        {
            "question": question,
            "question_id": f"invented_{i}",
            "answer": {
                "value": answer,
                "aliases": [answer],
                "normalized_aliases": [answer.lower()],
                "normalized_value": answer.lower(),
                "type": "WikipediaEntity",
            },
        }
        for i, (question, answer, _) in enumerate(facts(world))
    ]


def instruction_rows(world: World, seed: int, count: int) -> list[dict]:
    """IFEval rows (key, prompt, instruction_id_list, kwargs): a fact asked under an instruction."""
    rng, known, rows = random.Random(seed), facts(world), []
    for key in range(count):
        question, _, _ = rng.choice(known)
        instruction_id, kwargs, text, _ = INSTRUCTIONS[key % len(INSTRUCTIONS)]
        rows.append(
            {
                "key": key,
                "prompt": f"{question} {text}",
                "instruction_id_list": [instruction_id],
                "kwargs": [dict(kwargs)],
            }
        )
    return rows
