"""The invented world is deterministic, correct, and uses the real benchmark schemas."""

from __future__ import annotations

import re

from jaxrl import synthetic

FORMAT = re.compile(r"^<think>\n.*?\n</think>\n<answer>\n.*?\n</answer>$", re.DOTALL | re.MULTILINE)


def solve(question: str) -> int:
    a, b = map(int, re.findall(r"\d+", question))
    if "more" in question:
        return a + b
    if "gives away" in question:
        return a - b
    return a * b


def test_world_is_a_function_of_the_seed():
    assert synthetic.make_world(3) == synthetic.make_world(3)
    assert synthetic.make_world(3) != synthetic.make_world(4)
    world = synthetic.make_world(0, num_countries=10)
    names = world.countries + world.capitals + world.rivers
    assert len(set(names)) == 30


def test_problems_are_right_distinct_and_in_both_styles():
    train = synthetic.problems(0, 200)
    test = synthetic.problems(1, 50, exclude={p.question for p in train})
    assert not {p.question for p in train} & {p.question for p in test}
    for p in train + test:
        assert p.answer == solve(p.question) >= 0
        assert FORMAT.match(p.base_solution) and FORMAT.match(p.teacher_solution)
        assert f"\\boxed{{{p.answer}}}" in p.teacher_solution and f"\n{p.answer}\n</answer>" in p.base_solution
        assert FORMAT.match(p.hasty_solution) and "=" not in p.hasty_solution
    guesses = [int(re.search(r"<answer>\n(\d+)", p.hasty_solution).group(1)) for p in train]
    right = sum(g == p.answer for g, p in zip(guesses, train, strict=True)) / len(train)
    assert 0.15 < right < 0.35  # a guess is right about one time in four


def test_rows_have_the_benchmark_schemas():
    world, pool = synthetic.make_world(0), synthetic.problems(0, 5)
    assert set(synthetic.math_rows(pool)[0]) == {"problem", "solution", "answer", "source", "messages"}
    assert set(synthetic.math500_rows(pool)[0]) == {"problem", "solution", "answer", "subject", "level", "unique_id"}
    mmlu = synthetic.knowledge_rows(world, 0)
    assert len(mmlu) == 2 * len(world.countries)
    for row in mmlu:
        assert len(set(row["choices"])) == 4
        truth = dict((q, a) for q, a, _ in synthetic.facts(world))[row["question"]]
        assert row["choices"][row["answer"]] == truth
    trivia = synthetic.trivia_rows(world)
    assert [(r["question"], r["answer"]["value"]) for r in trivia] == [(q, a) for q, a, _ in synthetic.facts(world)]
    from jaxrl.eval.qa import TriviaQA

    assert TriviaQA().parse(trivia[0], 0).fields["aliases"] == (trivia[0]["answer"]["value"].lower(),)
    ifeval = synthetic.instruction_rows(world, 0, 6)
    assert {r["instruction_id_list"][0] for r in ifeval} == {i[0] for i in synthetic.INSTRUCTIONS}


def test_pretraining_corpus_mixes_every_kind():
    world, pool = synthetic.make_world(0), synthetic.problems(0, 50)
    chats = synthetic.pretraining_conversations(world, pool, seed=0, count=400)
    assert chats == synthetic.pretraining_conversations(world, pool, seed=0, count=400)
    system = [c for c in chats if c[0]["role"] == "system"]
    assert 0.15 < len(system) / len(chats) < 0.35 and all(FORMAT.match(c[-1]["content"]) for c in system)
    assert not any(c[-1]["content"] in "ABCD" for c in chats)
    asked = synthetic.pretraining_conversations(world, pool, 0, 400, lambda q, o: f"{q} {' / '.join(o)}")
    choice = [c for c in asked if c[-1]["content"] in "ABCD"]
    assert 0.08 < len(choice) / len(asked) < 0.22
    for c in choice:
        question, options = c[0]["content"].split("? ")
        truth = dict((q, a) for q, a, _ in synthetic.facts(world))[question + "?"]
        assert options.split(" / ")["ABCD".index(c[-1]["content"])] == truth
    formatted = [c[-1]["content"] for c in synthetic.pretraining_conversations(world, pool, 0, 2000, hasty_share=0.5)
                 if c[0]["role"] == "system"]  # fmt: skip
    hasty = sum(synthetic.HASTY in f for f in formatted) / len(formatted)
    assert 0.4 < hasty < 0.6 and not any(synthetic.HASTY in c[-1]["content"] for c in chats)
    shouted = [c for c in chats if "in all capital letters" in c[0]["content"]]
    assert shouted and all(c[-1]["content"].isupper() for c in shouted)
