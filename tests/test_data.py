"""The data layer: chat templates, sources, SFT tokenisation and batches, prompts, resumable order."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrl.data import (
    SYSTEM_PROMPT,
    ChatConfig,
    DataConfig,
    EpochSampler,
    PromptBatches,
    SFTBatches,
    conversations,
    encode_example,
    encode_prompt,
    encode_prompts,
    load_prompts,
    load_rows,
    load_sft_dataset,
    render_prompt,
    tokenize_sft,
)
from jaxrl.data.batching import Batch, packed_rows, padded_rows
from jaxrl.data.chat import id_outside, render_example
from jaxrl.errors import JaxrlError

FIXTURE = Path(__file__).parent / "fixtures" / "data" / "openr1_math_sample.jsonl"
SOURCES = [json.loads(line)["source"] for line in FIXTURE.read_text().splitlines()]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from jaxrl.tiny import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def sft_data(tokenizer):
    return load_sft_dataset(DataConfig(str(FIXTURE)), tokenizer, ChatConfig())


# ---------------------------------------------------------------------------------------------
# Chat templates


def test_olmo2_prompt_is_the_study_format():
    expected = (
        "<|endoftext|><|system|>\nYou are a helpful AI Assistant that provides well-reasoned and detailed "
        "responses. You first think about the reasoning process as an internal monologue and then provide "
        "the user with the answer. Respond in the following format: <think>\n...\n</think>\n<answer>\n...\n"
        "</answer>\n<|user|>\nWhat is 2+3?\n<|assistant|>\n"
    )
    assert render_prompt("What is 2+3?") == expected
    quirk = ChatConfig(drop_user_newline=True)
    assert render_prompt("What is 2+3?", quirk) == expected.replace("<|user|>\nWhat", "<|user|>What")
    text, start = render_example("Q?", "A.", ChatConfig(system_prompt=None))
    assert text == "<|endoftext|><|user|>\nQ?\n<|assistant|>\nA.<|endoftext|>" and text[start:] == "A.<|endoftext|>"


def test_olmo2_keeps_a_given_system_turn_and_earlier_turns():
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "1?"},
                {"role": "assistant", "content": "1"}, {"role": "user", "content": "2?"}]  # fmt: skip
    assert render_prompt(messages) == (
        "<|endoftext|><|system|>\nS\n<|user|>\n1?\n<|assistant|>\n1<|endoftext|>\n<|user|>\n2?\n<|assistant|>\n"
    )


def test_tokenizer_template_matches_olmo2_on_the_tiny_tokenizer(tokenizer):
    # jaxrl.tiny's tokenizer carries the OLMo-2/Tulu Jinja template: both paths must agree exactly.
    own = ChatConfig(chat_template="tokenizer")
    assert render_prompt("What is 2+3?", own, tokenizer) == render_prompt("What is 2+3?")
    a = encode_example("What is 2+3?", "<answer>\n5\n</answer>", tokenizer, own)
    b = encode_example("What is 2+3?", "<answer>\n5\n</answer>", tokenizer)
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.completion_mask, b.completion_mask)


def test_encoded_example_is_prompt_then_completion_then_eos(tokenizer):
    completion = "<think>\n2 plus 3 is 5.\n</think>\n<answer>\n5\n</answer>"
    enc = encode_example("What is 2+3?", completion, tokenizer)
    prompt_ids = encode_prompt("What is 2+3?", tokenizer)
    assert enc.ids.dtype == np.int32 and enc.completion_mask.dtype == bool
    assert enc.prompt_length == len(prompt_ids) and enc.ids[: len(prompt_ids)].tolist() == prompt_ids
    assert not enc.completion_mask[: len(prompt_ids)].any() and enc.completion_mask[len(prompt_ids) :].all()
    assert tokenizer.decode(enc.ids[enc.completion_mask]) == completion + "<|endoftext|>"
    assert enc.ids[-1] == tokenizer.eos_token_id and prompt_ids[0] == tokenizer.eos_token_id  # bos once


def test_plain_template_gets_an_eos_and_slow_tokenizers_split_at_the_boundary(tokenizer):
    import copy

    plain = copy.deepcopy(tokenizer)
    plain.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    own = ChatConfig(chat_template="tokenizer", system_prompt=None)
    enc = encode_example("2+3?", "5", plain, own)
    assert plain.decode(enc.ids) == "user: 2+3?\nassistant: 5\n<|endoftext|>"  # eos appended
    # " 5" is one token straddling the boundary: it holds completion text, so it is trained on
    assert plain.decode(enc.ids[enc.completion_mask]) == " 5\n<|endoftext|>"

    class Slow:  # no offsets: prompt and completion are tokenised apart
        is_fast, eos_token_id = False, tokenizer.eos_token_id

        def __call__(self, text, **kwargs):
            return {"input_ids": tokenizer(text, add_special_tokens=False)["input_ids"]}

    completion = "<think>\n5\n</think>\n<answer>\n5\n</answer>"
    fast, slow = encode_example("2+3?", completion, tokenizer), encode_example("2+3?", completion, Slow())
    assert np.array_equal(fast.ids, slow.ids) and np.array_equal(fast.completion_mask, slow.completion_mask)


def test_tokenizer_template_errors(tokenizer):
    with pytest.raises(JaxrlError, match="needs a tokenizer"):
        render_prompt("x", ChatConfig(chat_template="tokenizer"))
    bare = type("Bare", (), {"chat_template": None})()
    with pytest.raises(JaxrlError, match="has no chat template"):
        render_prompt("x", ChatConfig(chat_template="tokenizer"), bare)
    with pytest.raises(JaxrlError, match="chat_template='chatml'; choose olmo2 or tokenizer"):
        ChatConfig(chat_template="chatml")
    with pytest.raises(JaxrlError, match="unknown chat role 'tool'"):
        render_prompt([{"role": "tool", "content": "x"}])


# ---------------------------------------------------------------------------------------------
# Sources


def test_jsonl_rows_and_filter():
    rows = load_rows(DataConfig(str(FIXTURE)))
    assert len(rows) == 12 and set(rows.rows[0]) >= {"problem", "solution", "answer", "source", "messages"}
    cn = load_rows(DataConfig(str(FIXTURE), filters=("source=cn_k12",)))
    assert len(cn) == SOURCES.count("cn_k12") == 9 and cn.filtered_out == 3
    assert all(r["source"] == "cn_k12" for r in cn.rows)
    other = load_rows(DataConfig(str(FIXTURE), filters=("source!=cn_k12", "problem_type==Algebra"), max_samples=1))
    assert [r["source"] for r in other.rows] == ["amc_aime"] and other.filtered_out == 10


def test_json_and_parquet_give_the_same_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = load_rows(DataConfig(str(FIXTURE))).rows
    (tmp_path / "list.json").write_text(json.dumps(rows))
    (tmp_path / "wrapped.json").write_text(json.dumps({"version": 1, "data": rows}))
    shutil.copy(FIXTURE, tmp_path / "lines.json")  # JSON lines in a .json file
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    for name in ("list.json", "wrapped.json", "lines.json", "rows.parquet"):
        assert load_rows(DataConfig(str(tmp_path / name))).rows == rows, name


def test_table_and_json_paths_filter_and_select_alike(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": i, "ok": i % 3 == 0, "level": i % 4, "text": f"t{i}"} for i in range(12)]
    (tmp_path / "flat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "flat.parquet")
    (tmp_path / "flat.csv").write_text("id,ok,level,text\n" + "".join(
        f"{r['id']},{str(r['ok']).lower()},{r['level']},{r['text']}\n" for r in rows))  # fmt: skip
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(tmp_path / "flat.jsonl", folder / "train.jsonl")
    config = DataConfig(filters=("ok=true", "level!=3"), columns=("id", "text"), max_samples=2)
    expected = [{"id": 0, "text": "t0"}, {"id": 6, "text": "t6"}]  # 0, 6, 9 pass; the first 2 kept
    for name in ("flat.jsonl", "flat.parquet", "folder"):
        got = load_rows(dataclasses.replace(config, dataset_name=str(tmp_path / name)))
        assert got.rows == expected and got.filtered_out == 9, name
    csv = load_rows(DataConfig(str(tmp_path / "flat.csv"), filters=("level=2",)))  # CSV reads true/false as bool
    assert [r["id"] for r in csv.rows] == [2, 6, 10] and csv.rows[0] == {"id": 2, "ok": False, "level": 2, "text": "t2"}
    with pytest.raises(JaxrlError, match=r"cannot load dataset .*folder \[test\]"):
        load_rows(DataConfig(str(folder), split="test"))


def test_bad_lines_are_skipped_and_counted(tmp_path):
    lines = FIXTURE.read_text().splitlines()
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([lines[0], "{not json", "[1, 2]", "", lines[1], '{"problem": "trunc'] + [""]))
    rows = load_rows(DataConfig(str(path)))
    assert len(rows) == 2
    assert rows.skipped == {"line is not valid JSON": 2, "line is not a JSON object": 1}
    assert "2 rows" in rows.summary() and "2 skipped: line is not valid JSON" in rows.summary()
    with pytest.raises(JaxrlError, match="line 2 is not valid JSON"):
        load_rows(DataConfig(str(path), strict=True))


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def bad_sources(tmp_path):
    good = FIXTURE.read_text()
    return [
        (DataConfig(""), "no dataset"),
        (DataConfig(str(tmp_path / "missing.jsonl")), "does not exist"),
        (DataConfig(write(tmp_path, "empty.jsonl", "\n\n")), "is empty"),
        (
            DataConfig(write(tmp_path, "latin1.jsonl", '{"problem": "caf\xe9"}\n'.encode("latin-1"))),
            "is not UTF-8 text (bad byte at line 1)",
        ),
        (DataConfig(write(tmp_path, "junk.jsonl", "nope\n{also not\n")), "holds no usable rows (2 line is not valid"),
        (DataConfig(write(tmp_path, "broken.json", '[{"a": 1},')), "is not valid JSON"),
        (DataConfig(write(tmp_path, "scalar.json", "3")), "expected a list of rows"),
        (DataConfig(write(tmp_path, "rows.txt", "a,b\n")), "unknown data format .txt"),
        (DataConfig(write(tmp_path, "header.csv", "a,b\n")), "holds no rows"),
        (DataConfig(write(tmp_path, "ok4.jsonl", good), columns=("problem", "gold")), "has no column 'gold'"),
        (DataConfig(write(tmp_path, "fake.parquet", "not parquet")), "cannot read"),
        (DataConfig(write(tmp_path, "ok.jsonl", good), filters=("sauce=cn_k12",)), "filter on 'sauce': "),
        (DataConfig(write(tmp_path, "ok2.jsonl", good), filters=("source=cn_k13",)), "keeps none of 12 rows of"),
        (lambda: DataConfig(write(tmp_path, "ok3.jsonl", good), filters=("source",)), "malformed filter 'source'"),
        (lambda: DataConfig(str(FIXTURE), max_samples=0), "data.max_samples must be an integer >= 1, got 0"),
        (
            DataConfig("some-org/some-dataset-that-is-not-cached"),
            "cannot load dataset some-org/some-dataset-that-is-not-cached [train]: ",
        ),
    ]


def test_bad_sources_are_one_line_errors(tmp_path):
    for config, message in bad_sources(tmp_path):
        with pytest.raises(JaxrlError) as err:  # a lambda: the config itself refuses the value
            load_rows(config) if isinstance(config, DataConfig) else config()
        assert message in str(err.value), (config, str(err.value))
        assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# SFT examples


def test_conversations_from_messages_and_from_columns():
    rows = load_rows(DataConfig(str(FIXTURE))).rows
    pairs, skipped = conversations(rows, DataConfig())
    assert len(pairs) == 12 and not skipped
    assert pairs[0] == ([{"role": "user", "content": rows[0]["problem"]}], rows[0]["messages"][1]["content"])
    pairs, _ = conversations(rows, DataConfig(prompt_column="problem", completion_column="solution"))
    assert pairs[3] == (rows[3]["problem"], rows[3]["solution"])


def test_bad_rows_are_skipped_with_reasons():
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    rows = [good, {"messages": []}, {"messages": [{"role": "user", "content": "q"}]},
            {"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}, {"other": 1},
            {"messages": [{"role": "assistant", "content": "a"}]}]  # fmt: skip
    pairs, skipped = conversations(rows, DataConfig())
    assert len(pairs) == 1 and sum(skipped.values()) == 5
    assert skipped["no 'messages' column"] == 1 and skipped["no user message before the answer"] == 1
    with pytest.raises(JaxrlError, match="bad row: "):
        conversations(rows, DataConfig(strict=True))
    with pytest.raises(JaxrlError, match="no column 'conversation'"):
        conversations(rows, DataConfig(messages_column="conversation"))
    with pytest.raises(JaxrlError, match="set both prompt_column and completion_column"):
        conversations(rows, DataConfig(prompt_column="problem"))


def test_length_filter_drops_and_counts(tokenizer):
    pairs, _ = conversations(load_rows(DataConfig(str(FIXTURE))).rows, DataConfig())
    lengths = np.array([len(encode_example(p, c, tokenizer).ids) for p, c in pairs])
    limit = int(np.median(lengths))
    data = tokenize_sft(pairs, tokenizer, ChatConfig(), max_length=limit)
    assert data.counts == {
        "examples": 12,
        "too_long": int((lengths > limit).sum()),
        "kept": int((lengths <= limit).sum()),
    }
    assert data.lengths.tolist() == lengths[lengths <= limit].tolist() and data.tokens.dtype == np.int32
    with pytest.raises(JaxrlError, match="no SFT example left: 12 of 12 are longer than max_length=5"):
        tokenize_sft(pairs, tokenizer, ChatConfig(), max_length=5)


def test_load_sft_dataset_counts_every_row(tokenizer, tmp_path):
    lines = FIXTURE.read_text().splitlines()
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines + ["{bad", '{"messages": [], "source": "cn_k12"}']) + "\n")
    data = load_sft_dataset(DataConfig(str(path), filters=("source=cn_k12",)), tokenizer, max_length=4096)
    assert data.counts == {"rows": 14, "filtered_out": 3, "skipped: line is not valid JSON": 1,
                           "skipped: 'messages' is not a non-empty list of messages": 1,
                           "examples": 9, "too_long": 0, "kept": 9}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Row layout


def test_padded_rows_worked_by_hand():
    a = (np.array([5, 6, 7], np.int32), np.array([False, True, True]))
    b = (np.array([8, 9], np.int32), np.array([False, True]))
    batch = padded_rows([a, b], 4, pad_id=0)
    assert batch.tokens.tolist() == [[5, 6, 7, 0], [8, 9, 0, 0]]
    assert batch.targets.tolist() == [[6, 7, 0, 0], [9, 0, 0, 0]]
    assert batch.segment_ids.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]
    assert batch.positions.tolist() == [[0, 1, 2, 0], [0, 1, 0, 0]]
    assert batch.loss_mask.tolist() == [[1, 1, 0, 0], [1, 0, 0, 0]] and batch.num_examples == 2
    completion_only = padded_rows([(a[0], np.array([False, False, True]))], 4, pad_id=0)
    assert completion_only.loss_mask.tolist() == [[0, 1, 0, 0]]  # only the prediction of token 7


def test_packed_rows_worked_by_hand():
    ex = [(np.arange(n, dtype=np.int32) + 10 * n, np.ones(n, bool)) for n in (3, 5, 2, 4)]
    batch = packed_rows(ex, 8, None, pad_id=-1, rows_multiple_of=4)
    # first-fit decreasing: 5 -> row 0, 4 -> row 1, 3 -> row 0, 2 -> row 1; rows keep batch order
    assert batch.tokens.shape == (4, 8) and batch.num_examples == 4
    assert batch.tokens[0].tolist() == [30, 31, 32, 50, 51, 52, 53, 54]
    assert batch.segment_ids[0].tolist() == [1, 1, 1, 2, 2, 2, 2, 2]
    assert batch.positions[0].tolist() == [0, 1, 2, 0, 1, 2, 3, 4]
    assert batch.targets[0].tolist() == [31, 32, -1, 51, 52, 53, 54, -1]
    assert batch.loss_mask[0].tolist() == [1, 1, 0, 1, 1, 1, 1, 0]
    assert batch.tokens[1].tolist() == [20, 21, 40, 41, 42, 43, -1, -1]
    assert not batch.segment_ids[2:].any() and not batch.loss_mask[2:].any()
    with pytest.raises(JaxrlError, match="need 2 packed rows of 8 tokens, more than num_rows=1"):
        packed_rows(ex, 8, 1, pad_id=0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=20), st.integers(12, 20), st.integers(1, 4))
def test_packing_keeps_every_example_once_and_whole(lengths, length, multiple):
    examples = [(np.full(n, i + 1, np.int32), np.ones(n, bool)) for i, n in enumerate(lengths)]
    batch = packed_rows(examples, length, None, pad_id=0, rows_multiple_of=multiple)
    assert batch.tokens.shape[0] % multiple == 0 and batch.num_examples == len(lengths)
    found = []
    for r in range(batch.tokens.shape[0]):
        for segment in range(1, batch.segment_ids[r].max() + 1):
            at = np.flatnonzero(batch.segment_ids[r] == segment)
            assert np.array_equal(at, np.arange(at[0], at[0] + len(at)))  # contiguous
            assert np.array_equal(batch.positions[r, at], np.arange(len(at)))
            assert len(set(batch.tokens[r, at])) == 1  # one example, whole
            found.append((int(batch.tokens[r, at[0]]), len(at)))
    assert sorted(found) == sorted((i + 1, n) for i, n in enumerate(lengths))
    assert batch.loss_mask.sum() == sum(n - 1 for n in lengths)
    # first-fit decreasing never needs more than twice the ideal row count
    assert batch.segment_ids.any(axis=1).sum() <= max(1, 2 * -(-sum(lengths) // length))


def test_packed_row_logits_equal_each_example_alone():
    """The layout matches the decoder's masking: a packed example sees only itself."""
    from jaxrl.models.config import preset
    from jaxrl.models.params import init_decoder

    model = init_decoder(preset("tiny-olmo2"), seed=0)
    rng = np.random.default_rng(0)
    ex = [(rng.integers(3, 300, n).astype(np.int32), np.ones(n, bool)) for n in (7, 5, 3)]
    packed = packed_rows(ex, 16, 1, pad_id=1)
    logits = np.asarray(model(packed.tokens, packed.segment_ids, packed.positions))
    alone = np.zeros((3, 7), np.int32)  # each example alone in its row, right-padded: causal, so
    for row, (ids, _) in enumerate(ex):  # the padding after it cannot change its logits
        alone[row, : len(ids)] = ids
    alone_logits = np.asarray(model(alone))
    for segment, (ids, _) in enumerate(ex, 1):
        got = logits[0, packed.segment_ids[0] == segment]
        np.testing.assert_allclose(got, alone_logits[segment - 1, : len(ids)], atol=2e-5)


# ---------------------------------------------------------------------------------------------
# Order, resume, hosts


def test_epochs_are_seeded_permutations_and_drop_the_last_partial_batch():
    sampler = EpochSampler(10, 3, seed=1, num_epochs=2)
    batches = [b.tolist() for b in sampler]
    assert len(batches) == 6 and sampler.steps_per_epoch == 3
    for epoch in (batches[:3], batches[3:]):
        seen = sum(epoch, [])
        assert len(set(seen)) == 9 and set(seen) <= set(range(10))
    assert batches[:3] != batches[3:]
    assert [b.tolist() for b in EpochSampler(10, 3, seed=1, num_epochs=2)] == batches
    assert [b.tolist() for b in EpochSampler(10, 3, seed=2, num_epochs=2)] != batches
    assert [b.tolist() for b in EpochSampler(10, 5, shuffle=False, num_epochs=1)] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


def same(a: Batch, b: Batch) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("padding_free", [False, True])
def test_resume_equals_uninterrupted(sft_data, tokenizer, padding_free):
    def make():
        return SFTBatches(sft_data, 4, tokenizer.pad_token_id, seed=7, padding_free=padding_free, max_length=1024)

    uninterrupted = make()
    expected = [next(uninterrupted) for _ in range(8)]  # 3 steps per epoch: crosses two epoch ends
    for cut in (1, 3, 5):
        first = make()
        got = [next(first) for _ in range(cut)]
        saved = json.loads(json.dumps(first.state()))
        resumed = make()
        resumed.restore(saved)
        got += [next(resumed) for _ in range(8 - cut)]
        assert all(same(a, b) for a, b in zip(got, expected, strict=True)), cut


@pytest.mark.parametrize("padding_free,hosts", [(False, 2), (False, 4), (True, 2), (True, 4)])
def test_host_slices_concatenate_to_the_single_host_batch(sft_data, tokenizer, padding_free, hosts):
    def make(index, count):
        return SFTBatches(sft_data, 8, tokenizer.pad_token_id, seed=3, padding_free=padding_free,
                          max_length=1024, pad_to_multiple_of=16, process_index=index, process_count=count)  # fmt: skip

    single = make(0, 1)
    per_host = [make(i, hosts) for i in range(hosts)]
    for _ in range(3):
        whole = next(single)
        parts = [next(h) for h in per_host]
        assert len({p.tokens.shape for p in parts}) == 1
        joined = Batch(*(np.concatenate(arrays) for arrays in zip(*parts, strict=True)))
        if padding_free:  # the single host rounds rows to 1, hosts to a multiple of `hosts`: compare the used rows
            used = whole.segment_ids.any(axis=1).sum()
            assert same(Batch(*(a[:used] for a in joined)), Batch(*(a[:used] for a in whole)))
            assert not joined.segment_ids[used:].any()
        else:
            assert same(joined, whole)
        assert sum(p.num_examples for p in parts) == whole.num_examples == 8


def test_sft_batches_shapes_and_loss_modes(sft_data, tokenizer):
    padded = next(SFTBatches(sft_data, 4, tokenizer.pad_token_id, seed=0, pad_to_multiple_of=64, max_length=4096))
    assert padded.tokens.shape[0] == 4 and padded.tokens.shape[1] % 64 == 0
    assert padded.loss_mask.sum() == (padded.segment_ids > 0).sum() - 4  # every token but each first
    completion = next(SFTBatches(sft_data, 4, tokenizer.pad_token_id, seed=0, completion_only_loss=True))
    assert 0 < completion.loss_mask.sum() < padded.loss_mask.sum()
    predicted = completion.targets[completion.loss_mask > 0]
    assert predicted[-1] == tokenizer.eos_token_id
    packed = next(SFTBatches(sft_data, 12, tokenizer.pad_token_id, padding_free=True, max_length=4096))
    assert packed.num_examples == 12 and packed.tokens.shape[1] == 4096
    assert int(packed.loss_mask.sum()) == int(sft_data.lengths.sum()) - 12


def test_batching_errors(sft_data):
    with pytest.raises(JaxrlError, match="do not split over 3 hosts"):
        SFTBatches(sft_data, 8, 0, process_index=0, process_count=3)
    with pytest.raises(JaxrlError, match="process_index 2 is not in"):
        SFTBatches(sft_data, 8, 0, process_index=2, process_count=2)
    with pytest.raises(JaxrlError, match="fewer than one batch"):
        SFTBatches(sft_data, 64, 0)
    with pytest.raises(JaxrlError, match="exceed max_length=10"):
        SFTBatches(sft_data, 4, 0, max_length=10)
    batches = SFTBatches(sft_data, 4, 0, seed=1)
    with pytest.raises(JaxrlError, match="seed was 2, now 1"):
        batches.restore({"epoch": 0, "step_in_epoch": 1, "seed": 2, "num_examples": 12, "batch_size": 4})
    with pytest.raises(JaxrlError, match="bad data position"):
        batches.restore({"epoch": 0, "step_in_epoch": 9})


# ---------------------------------------------------------------------------------------------
# Prompts


def test_prompts_are_templated_truncated_and_keep_their_rows(tokenizer):
    prompts = load_prompts(DataConfig(str(FIXTURE), prompt_column="problem", filters=("source=cn_k12",)), tokenizer)
    rows = load_rows(DataConfig(str(FIXTURE), filters=("source=cn_k12",))).rows
    assert len(prompts) == 9 and prompts.rows == rows and prompts.counts["truncated"] == 0
    assert prompts.prompt_ids[0] == encode_prompt(rows[0]["problem"], tokenizer)
    full = [len(p) for p in prompts.prompt_ids]
    limit = sorted(full)[4]
    short = encode_prompts(rows, tokenizer, max_prompt_length=limit)
    assert short.counts["truncated"] == sum(n > limit for n in full)
    for whole, cut in zip(prompts.prompt_ids, short.prompt_ids, strict=True):
        assert cut == whole[-limit:]  # left truncation keeps the end (the assistant tag)
    assert SYSTEM_PROMPT in tokenizer.decode(prompts.prompt_ids[0])


def test_prompt_errors_and_skips(tokenizer):
    rows = [{"problem": "1+1?"}, {"problem": ""}, {"problem": 3}, {"question": "x"}]
    prompts = encode_prompts(rows, tokenizer)
    assert len(prompts) == 1 and prompts.counts["skipped: 'problem' is missing or not text/messages"] == 3
    with pytest.raises(JaxrlError, match="no column 'prompt'"):
        encode_prompts(rows, tokenizer, prompt_column="prompt")
    with pytest.raises(JaxrlError, match="max_prompt_length must be at least 1"):
        encode_prompts(rows, tokenizer, max_prompt_length=0)
    with pytest.raises(JaxrlError, match="'problem' is missing"):
        encode_prompts(rows, tokenizer, strict=True)


@pytest.fixture(scope="module")
def larger_tokenizer(tmp_path_factory):
    """The tiny tokenizer plus one token: "triangle" is id 384, one past a 384-row embedding."""
    from jaxrl.tiny import build_tokenizer

    tokenizer = build_tokenizer(tmp_path_factory.mktemp("larger"))
    tokenizer.add_tokens(["triangle"])
    return tokenizer


def test_ids_outside_the_vocabulary_are_skipped_and_counted_or_an_error_when_strict(larger_tokenizer):
    rows = load_rows(DataConfig(str(FIXTURE))).rows
    (at,) = [i for i, r in enumerate(rows) if "triangle" in r["problem"]]  # the one row with id 384
    reason = "skipped: a token id is outside the model's vocabulary [0, 384)"
    pairs, _ = conversations(rows, DataConfig())
    data = tokenize_sft(pairs, larger_tokenizer, ChatConfig(), vocab_size=384)
    assert len(data) == 11 and data.counts[reason] == 1 and data.tokens.max() < 384
    assert len(tokenize_sft(pairs, larger_tokenizer, ChatConfig())) == 12  # no vocab_size: no check
    with pytest.raises(JaxrlError, match=rf"SFT example {at}: token id 384 is outside the model's vocabulary"):
        tokenize_sft(pairs, larger_tokenizer, ChatConfig(), vocab_size=384, strict=True)
    loaded = load_sft_dataset(DataConfig(str(FIXTURE)), larger_tokenizer, vocab_size=384)
    assert loaded.counts[reason] == 1 and loaded.counts["kept"] == 11

    prompts = load_prompts(DataConfig(str(FIXTURE)), larger_tokenizer, vocab_size=384)
    assert len(prompts) == 11 and prompts.counts[reason] == 1 and rows[at] not in prompts.rows
    with pytest.raises(JaxrlError, match=rf"prompt {at}: token id 384 is outside the model's vocabulary"):
        encode_prompts(rows, larger_tokenizer, strict=True, vocab_size=384)
    assert id_outside([0, 5, -1], 10) == -1 and id_outside([9], 10) is None and id_outside([99], None) is None


def test_prompt_batches_resume_and_split_over_hosts(tokenizer):
    prompts = load_prompts(DataConfig(str(FIXTURE)), tokenizer)
    single = PromptBatches(prompts, 4, seed=42)
    expected = [next(single) for _ in range(5)]
    hosts = [PromptBatches(prompts, 4, seed=42, process_index=i, process_count=2) for i in range(2)]
    for whole in expected:
        parts = [next(h) for h in hosts]
        assert parts[0].prompt_ids + parts[1].prompt_ids == whole.prompt_ids
        assert parts[0].rows + parts[1].rows == whole.rows
    first = PromptBatches(prompts, 4, seed=42)
    next(first), next(first)
    resumed = PromptBatches(prompts, 4, seed=42)
    resumed.restore(first.state())
    assert [next(resumed).prompt_ids for _ in range(3)] == [b.prompt_ids for b in expected[2:]]


# ---------------------------------------------------------------------------------------------
# `jaxrl data`


def test_data_report_counts_lengths_and_the_length_filter(tokenizer, tmp_path):
    from jaxrl.data.report import DataReportConfig, data_report

    tokenizer.save_pretrained(tmp_path / "tok")
    pairs, _ = conversations(load_rows(DataConfig(str(FIXTURE), filters=("source=cn_k12",))), DataConfig())
    lengths = np.array([len(encode_example(p, c, tokenizer).ids) for p, c in pairs])
    config = DataReportConfig(DataConfig(str(FIXTURE), filters=("source=cn_k12",)), tokenizer=str(tmp_path / "tok"),
                              max_length=int(np.median(lengths)))  # fmt: skip
    report = data_report(config)
    assert report["rows"] == 9 and report["filtered_out"] == 3 and report["examples"] == 9
    assert report["tokens"]["max"] == lengths.max() and report["tokens"]["total"] == lengths.sum()
    assert (
        report["over_max_length"] == (lengths > config.max_length).sum()
        and report["kept"] == 9 - report["over_max_length"]
    )
    assert report["first_example"].startswith("<|endoftext|><|system|>\n") and report["skipped"] == {}
    prompts = data_report(dataclasses.replace(config, mode="prompts", max_prompt_length=200))
    prompt_lengths = [len(encode_prompt(r["problem"], tokenizer)) for r in load_rows(config.data).rows]
    assert prompts["prompts"] == 9 and prompts["truncated"] == sum(n > 200 for n in prompt_lengths) > 0


def test_data_command_prints_json_and_fails_in_one_line(tmp_path):
    import subprocess
    import sys

    ok = subprocess.run([sys.executable, "-m", "jaxrl.cli", "data", f"data.dataset_name={FIXTURE}",
                         "data.filters=source!=cn_k12", "--json"], capture_output=True, text=True)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout.splitlines()[-1])["rows"] == 3 and "filtered out 9" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "jaxrl.cli", "data", "data.dataset_nam=x.jsonl"],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "did you mean 'data.dataset_name'?" in bad.stderr
