"""Each benchmark's parsing, prompt building, answer extraction and scoring on hand-written
fixtures with the real schemas, malformed rows included (skipped and counted)."""

from pathlib import Path

import pytest
from jaxrl.eval import ifeval
from jaxrl.eval.choice import extract_letter
from jaxrl.eval.maths import extract_number
from jaxrl.eval.prompts import encode, render_text, system_prompt_from
from jaxrl.eval.runner import EvalConfig, prepare
from jaxrl.eval.task import Item

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


def prepared(name, **kw):
    file = FIXTURES / f"{name.removesuffix('_loglik')}.jsonl"
    return prepare(name, EvalConfig(data={name.removesuffix("_loglik"): str(file)}, **kw))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from jaxrl.tiny import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tok"))


def test_math500_rows_prompt_and_scoring():
    p = prepared("math500")
    assert [i.id for i in p.items] == ["test/prealgebra/1.json", "test/prealgebra/2.json", "test/precalculus/807.json"]
    assert p.skipped == {"missing 'answer'": 1, "'problem' is empty": 1, "line is not valid JSON": 1}
    assert p.turns[1] == [{"role": "user", "content": "What is $2+3$?"}]
    completions = [
        ["so it is \\boxed{0.5}", "<answer>\n1/2\n</answer>", "\\boxed{2/3}", "no idea"],
        ["<think>\n2+3\n</think>\n<answer>\n5\n</answer>", "\\boxed{05.0}", "\\boxed{6}", "\\boxed{5"],
        # math-verify (the shared verifier) judges "\\left(3,..." against this gold's spacing wrong
        [
            "\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}",
            "\\boxed{(3, \\pi)}",
            "",
            "<answer>\n\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}\n</answer>",
        ],
    ]
    scored = p.task.score(p.items, completions)
    assert [[s.correct for s in row] for row in scored] == [
        [True, True, False, False],
        [True, True, False, False],
        [True, False, False, True],
    ]
    assert scored[0][3].verdict == "no_answer" and scored[0][3].answer is None
    assert scored[1][1].answer == "5" and scored[0][2].verdict == "wrong"  # plain numbers written canonically


def test_aime24_answers_may_be_integers():
    p = prepared("aime24")
    assert [(i.id, i.fields["answer"]) for i in p.items] == [("60", "16"), ("61", "1")]
    assert p.skipped == {"missing 'problem'": 1}
    scored = p.task.score(p.items, [["\\boxed{16}"], ["The remainder is \\boxed{001}"]])
    assert [row[0].correct for row in scored] == [True, True]


def test_gsm8k_five_shot_prompt_and_number_extraction():
    p = prepared("gsm8k")
    assert len(p.items) == 6 and p.num_shots == 5
    assert p.skipped == {
        "answer has no '#### N' final line": 1,
        "final answer after '####' is not a number: 'five'": 1,
        "missing 'answer'": 1,
    }
    assert p.items[5].fields["answer"] == "5000"  # "#### 5,000"
    turns = p.turns[0]
    assert len(turns) == 11 and [t["role"] for t in turns[:2]] == ["user", "assistant"]
    assert all(t["content"] != p.items[0].fields["question"] for t in turns[:-1])  # never its own shot
    assert turns[1]["content"].endswith("she earned 0.2 x 50 = $10.\nThe answer is 10.")
    assert "<<" not in turns[1]["content"]  # calculator marks dropped
    assert turns[-1] == {"role": "user", "content": p.items[0].fields["question"]}
    assert extract_number("so 48+24 = 72 clips.\nThe answer is 72.") == "72"
    assert extract_number("#### 1,200") == "1200"
    assert extract_number("It is 3, then 4.5 in total") == "4.5"
    assert extract_number("none") is None
    # an expression after "answer is": its result (lm-eval's GSM8K filters read 20 too), not its first number
    assert extract_number("So the answer is 5 * 4 = 20.") == "20"
    assert extract_number("The answer is 12 x 3 = 36 apples.") == "36"
    assert extract_number("answer is -3 - 2 = -5") == "-5"
    assert extract_number("The answer is 72 - easy. 3+4 = 7") == "72"  # no "=" in its own sentence
    assert extract_number("The answer is 4.5.") == "4.5"
    scored = p.task.score(p.items[:2], [["The answer is 72.", "I think 71"], ["\\boxed{10}", "The answer is $10.00."]])
    assert [[s.correct for s in row] for row in scored] == [[True, False], [True, True]]


def test_gpqa_options_shuffled_by_seed_and_letters_scored():
    p0, p0_again, p1 = (
        prepared("gpqa_diamond", seed=0),
        prepared("gpqa_diamond", seed=0),
        prepared("gpqa_diamond", seed=1),
    )
    assert len(p0.items) == 3
    assert p0.skipped == {"missing 'Incorrect Answer 3'": 1, "two of the four options are the same text": 1}
    assert [i.fields["options"] for i in p0.items] == [i.fields["options"] for i in p0_again.items]
    assert [i.fields["options"] for i in p0.items] != [i.fields["options"] for i in p1.items]
    for item in p0.items + p1.items:
        assert sorted(item.fields["options"])[0] in item.fields["options"]
        assert item.fields["options"]["ABCD".index(item.fields["gold"])] in ("Photon", "-1", "Mitochondrion")
    first = p0.items[0]
    text = p0.turns[0][0]["content"]
    assert text.startswith("Which particle mediates") and "\n\nA) " in text and "\nD) " in text
    gold = first.fields["gold"]
    wrong = next(x for x in "ABCD" if x != gold)
    scored = p0.task.score([first], [[f"\\boxed{{{gold}}}", f"The answer is ({wrong}).", "A good question."]])
    assert [(s.correct, s.answer, s.verdict) for s in scored[0]] == [
        (True, gold, "correct"), (False, wrong, "wrong"), (False, None, "no_answer")]  # fmt: skip


@pytest.mark.parametrize(
    "text, letter",
    [
        ("\\boxed{B}", "B"),
        ("\\boxed{\\text{(C)}}", "C"),
        ("<think>\nhmm\n</think>\n<answer>\nD) Paris\n</answer>", "D"),
        ("Let's see. The answer is (A).", "A"),
        ("the answer is: b", "B"),
        ("C", "C"),
        ("(B)", "B"),
        ("A cat sat on the mat.", None),
        ("The answer is (E).", None),  # not one of four options
        ("", None),
    ],
)
def test_extract_letter(text, letter):
    assert extract_letter(text, 4) == letter


def test_mmlu_generative_and_loglik_prompts():
    gen, ll = prepared("mmlu"), prepared("mmlu_loglik")
    assert len(gen.items) == 7
    assert gen.skipped == {
        "'answer' must be an index into choices; got 4": 1,
        "'choices' is not a list of at least two strings": 1,
        "'question' is empty": 1,
    }
    item, turns = gen.items[2], gen.turns[2]  # elementary_mathematics: its subject's other item comes first
    assert len(turns) == 11
    assert turns[0]["content"].startswith("The following is a multiple choice question about elementary mathematics.")
    assert "What is the square root of 81?" in turns[0]["content"] and turns[1]["content"] == "The answer is (C)."
    assert turns[-1]["content"].endswith("A) 54\nB) 56\nC) 58\nD) 64\n\nAnswer with the letter of the correct option.")
    assert item.fields["gold"] == "B"
    assert ll.turns[2][1]["content"] == "C" and ll.task.continuations(ll.items[2]) == ["A", "B", "C", "D"]
    scored = gen.task.score([item], [["The answer is (B).", "<answer>\nA\n</answer>"]])
    assert [s.correct for s in scored[0]] == [True, False]


def test_mmlu_pro_chain_of_thought_shots():
    p = prepared("mmlu_pro")
    assert [i.id for i in p.items] == ["70", "71", "72", "73", "74", "75", "76"]
    assert p.skipped == {
        "'answer' 'A' disagrees with 'answer_index' 2": 1,
        "'answer' 'E' is not the letter of an option": 1,
        "'options' is not a list of 2 to 10 strings": 1,
    }
    turns = p.turns[4]  # item 74 (math): the other math item's worked answer comes first
    assert "What is 12 squared?" in turns[0]["content"]
    assert turns[1]["content"] == "Let's think step by step. 12 x 12 = 144. The answer is (B)."
    assert "J) 33" in turns[-1]["content"] and 'finish your answer with "The answer is (X)"' in turns[-1]["content"]
    scored = p.task.score([p.items[4]], [["3^3 = 27. The answer is (C).", "The answer is (J)."]])
    assert [s.correct for s in scored[0]] == [True, False]


def test_ifeval_rows_and_strict_scoring():
    p = prepared("ifeval")
    assert [i.id for i in p.items] == ["1000", "1001", "1002", "1003"]
    assert p.skipped == {
        "unsupported instruction language:response_language": 1,
        "'instruction_id_list' and 'kwargs' are not lists (of ids, of dicts) of the same length": 1,
        "bad kwargs for length_constraints:number_words: unknown relation 'more than'; "
        "IFEval uses 'less than' or 'at least'": 1,
    }
    assert p.items[0].fields["kwargs"][1] == {"num_highlights": 3}  # the None padding dropped
    scored = p.task.score(
        p.items[1:4],
        [
            ["a cat sat on a mat\nit purred all day", "A cat sat"],
            ['"It trains the mind and it is fun"', '"Two." Is there anything else I can help with?'],
            ['```json\n{"capital": "Rome", "kind": "city"}\n```', '{"capital": "Rome"}'],
        ],
    )
    assert [[s.parts for s in row] for row in scored] == [
        [(True,), (False,)],
        [(True, False), (False, True)],
        [(True, True), (True, False)],
    ]
    assert [[s.correct for s in row] for row in scored] == [[True, False], [False, False], [True, False]]


CHECKS = [
    ("punctuation:no_comma", {}, "no commas here", "one, two"),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*a* and **b**", "*a* only"),
    ("length_constraints:number_words", {"relation": "at least", "num_words": 3}, "one two three", "one two"),
    ("length_constraints:number_words", {"relation": "less than", "num_words": 3}, "one two", "one two three"),
    ("length_constraints:number_sentences", {"relation": "less than", "num_sentences": 3}, "One. Two.", "A. B. C."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "p1\n***\np2", "p1\n***\n***\np2"),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
     "First.\n\nThen more.", "First.\n\nAfter."),
    ("keywords:existence", {"keywords": ["rome", "City"]}, "Rome is a city", "Rome"),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "at least"}, "cat Cat", "cat"),
    ("keywords:forbidden_words", {"forbidden_words": ["bad"]}, "badge is fine", "this is bad"),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "less than"}, "zoo", "zz"),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "[name] at [place]", "[name]"),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\np. s. bye", "Hi. PS bye"),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hi.\nP.P.S bye", "Hi.\nP.S. bye"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* a\n- b", "* a\n**b**"),
    ("detectable_format:constrained_response", {}, "My answer is yes.", "Yes."),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\na\nSection 2\nb", "Section 1\na"),
    ("detectable_format:json_format", {}, '{"a": 1}', "{a: 1}"),
    ("detectable_format:title", {}, "<<My Title>>\ntext", "<< >>\ntext"),
    ("combination:two_responses", {}, "one******two", "one******one"),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi."}, "say hi. Hi!", "Hi!"),
    ("change_case:english_lowercase", {}, "all lower", "Not lower"),
    ("change_case:english_capital", {}, "ALL CAPS", "Not caps"),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "AB CD ef", "AB cd"),
    ("startend:end_checker", {"end_phrase": "Any other questions?"},
     "Text. Any other questions?", "Any other questions? No"),
    ("startend:quotation", {}, '"quoted"', "not quoted"),
]  # fmt: skip


@pytest.mark.parametrize("instruction, kwargs, follows, breaks", CHECKS, ids=[c[0] for c in CHECKS])
def test_ifeval_checker(instruction, kwargs, follows, breaks):
    assert ifeval.check(follows, [instruction], [kwargs]) == [True]
    assert ifeval.check(breaks, [instruction], [kwargs]) == [False]


def test_every_checker_is_tested():
    assert {c[0] for c in CHECKS} == set(ifeval.CHECKERS)


def test_prompt_rendering_with_and_without_chat_template(tokenizer):
    turns = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
    ]
    text = render_text(turns, tokenizer, system_prompt_from("study"), "olmo2")
    assert text.startswith("<|endoftext|><|system|>\nYou are a helpful AI Assistant")
    assert text.endswith("<|user|>\nQ1\n<|assistant|>\nA1<|endoftext|>\n<|user|>\nQ2\n<|assistant|>\n")
    assert render_text(turns, tokenizer, None, "tokenizer") == "<|endoftext|>" + text.split("</answer>\n", 1)[1]
    plain = render_text(turns, tokenizer, None, "none")
    assert plain == "<|endoftext|>Q1\nA1\n\nQ2\n"
    ids = encode(text, tokenizer)
    assert ids[0] == tokenizer.eos_token_id and tokenizer.decode(ids) == text


def test_item_shots_never_include_the_item():
    from jaxrl.eval.task import pick_shots

    pool = [Item(str(i), {}, "g" if i % 2 else "h") for i in range(6)]
    assert [s.id for s in pick_shots(pool[1], pool, 3)] == ["3", "5", "0"]
    assert [s.id for s in pick_shots(Item("1", {}, "g"), pool, 2)] == ["1", "3"]  # same id, another item
    assert pick_shots(pool[0], pool, 0) == []


def test_model_arguments_expand_runs_and_need_a_tokenizer(tmp_path):
    from jaxrl.eval.models import expand_models

    from jaxrl.errors import JaxrlError
    from jaxrl.model_files import load_tokenizer

    run = tmp_path / "grpo"
    for step in ("10", "2", "tmp"):
        (run / "checkpoints" / step / "params").mkdir(parents=True)
    for d in (tmp_path / "a" / "base", tmp_path / "b" / "base"):
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
    refs = expand_models([str(run), str(tmp_path / "a" / "base"), str(tmp_path / "b" / "base")])
    assert [r.label for r in refs] == ["grpo@2", "grpo@10", "base", "base#2"]
    assert refs[1].path == run / "checkpoints" / "10"
    named = expand_models([f"GRPO={run}", f"Base={tmp_path / 'a' / 'base'}"])
    assert [r.label for r in named] == ["GRPO@2", "GRPO@10", "Base"] and named[2].path == tmp_path / "a" / "base"
    (tmp_path / "x=y").mkdir()
    (tmp_path / "x=y" / "config.json").write_text("{}")
    assert [r.label for r in expand_models([str(tmp_path / "x=y")])] == ["x=y"]  # a path that exists wins
    with pytest.raises(JaxrlError, match="not a HF model directory"):
        expand_models([str(tmp_path)])
    with pytest.raises(JaxrlError, match="pass --tokenizer"):
        load_tokenizer(refs[0].path)


def test_shots_from_another_file_and_k_overridden(tmp_path):
    import json

    shots = tmp_path / "shots.jsonl"
    rows = [{"question": f"What is {i}+{i}?", "answer": f"{i}+{i}={2 * i}\n#### {2 * i}"} for i in (11, 12, 13)]
    shots.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = EvalConfig(data={"gsm8k": str(FIXTURES / "gsm8k.jsonl")}, shots={"gsm8k": str(shots)},
                        num_shots={"gsm8k": 2})  # fmt: skip
    p = prepare("gsm8k", config)
    assert p.num_shots == 2
    # the shots file numbers its rows from 0 too; a shot is left out only when it is the item itself
    users = [t["content"] for t in p.turns[0][::2]]
    assert users == ["What is 11+11?", "What is 12+12?", p.items[0].fields["question"]]
    assert p.turns[3][1]["content"] == "11+11=22\nThe answer is 22."


def test_triviaqa_rows_aliases_and_recall():
    p = prepared("triviaqa")
    assert [i.id for i in p.items] == ["qz_1", "qz_2", "qz_5"]
    assert p.skipped == {"'question' is empty": 1, "missing 'answer' (a dict with 'value' and 'aliases')": 1}
    assert p.items[0].fields["aliases"] == ("danube", "river danube", "donau")  # normalised, de-duplicated
    assert p.turns[1] == [{"role": "user", "content": "What is the chemical symbol for gold?"}]
    completions = [
        ["The Danube.", "It is the river Danube\nnot the Rhine", "Danubex", "\n\nDONAU!"],
        ["au", "Gold's symbol is Ag.", "", "The symbol is Au (from aurum)."],
        ["It happened in 1969.", "1968"],
    ]
    scored = p.task.score(p.items, completions)
    assert [[s.correct for s in row] for row in scored] == [
        [True, True, False, True],
        [True, False, False, True],
        [True, False],
    ]
    assert scored[0][1].answer == "danube" and scored[1][2].verdict == "no_answer"
    assert scored[1][1].verdict == "wrong" and scored[1][1].answer == "Gold's symbol is Ag."
