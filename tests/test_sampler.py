"""The sampler against transformers' greedy generate, a teacher-forced recomputation, and properties."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from hf_models import FAMILY_CASES, build_hf_model
from hypothesis import given, settings
from hypothesis import strategies as st
from jaxrl.models.engine import right_padded, slot_count
from jaxrl.models.hf_io import load_hf
from jaxrl.models.sampler import SamplingConfig, _decode, bucket, pad_prompts, sample
from jaxrl.models.sampling import choose_tokens

from jaxrl.errors import JaxrlError
from jaxrl.sharding import LogicalMesh, make_mesh

# Mixed lengths: the batch pads to 32 prompt slots, and prompt 2 fills them exactly.
PROMPT_LENGTHS = (3, 9, 32, 5)
NEW = 12


def one_device() -> LogicalMesh:
    return LogicalMesh(make_mesh("data=1,fsdp=1,tensor=1", jax.devices()[:1]))


def prompts_for(vocab: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab, n).tolist() for n in PROMPT_LENGTHS]


def hf_greedy(model, prompts, new_tokens: int) -> np.ndarray:
    """transformers' greedy generate on a left-padded batch with an attention mask."""
    width = max(map(len, prompts))
    ids = np.zeros((len(prompts), width), np.int64)
    mask = np.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :], mask[i, width - len(p) :] = p, 1
    generation = transformers.GenerationConfig(
        do_sample=False, max_new_tokens=new_tokens, eos_token_id=None, pad_token_id=0
    )
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), generation_config=generation
        )
    return out[:, width:].numpy()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Every family built once: (transformers model, our decoder on one device)."""
    built = {}
    for name, config in FAMILY_CASES.items():
        directory = tmp_path_factory.mktemp(name)
        reference = build_hf_model(config, directory)
        built[name] = (directory, reference, load_hf(directory, one_device()))
    return built


@pytest.mark.parametrize("family", list(FAMILY_CASES))
def test_greedy_matches_transformers(models, family):
    _, reference, ours = models[family]
    prompts = prompts_for(ours.config.vocab_size)
    want = hf_greedy(reference, prompts, NEW)
    for slots in (None, 3):  # every row at once; continuous batching on 3 slots
        got = sample(ours, prompts, SamplingConfig(temperature=0, max_new_tokens=NEW), eos_token_ids=(), slots=slots)
        np.testing.assert_array_equal(got.tokens, want)
        assert got.finish_reasons == ["length"] * len(prompts)
        assert got.lengths.tolist() == [NEW] * len(prompts)


def teacher_forced_logprobs(model, prompts, completions, temperature: float) -> np.ndarray:
    """log_softmax(logits / T) of each completion token, from one full forward pass per row."""
    seqs = [prompts[j] + toks for j, toks in zip(completions.prompt_index, completions.token_lists(), strict=True)]
    width = max(map(len, seqs))
    tokens = np.zeros((len(seqs), width), np.int32)
    segments = np.zeros_like(tokens)
    for i, s in enumerate(seqs):  # right padding
        tokens[i, : len(s)], segments[i, : len(s)] = s, 1
    logits = np.asarray(jax.jit(lambda t, s: model(t, s))(tokens, segments), np.float64) / temperature
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    out = np.zeros(completions.logprobs.shape)
    for i, (j, n) in enumerate(zip(completions.prompt_index, completions.lengths, strict=True)):
        start = len(prompts[j])
        out[i, :n] = logp[i, np.arange(start - 1, start + n - 1), tokens[i, start : start + n]]
    return out


SAMPLED = SamplingConfig(temperature=0.7, top_k=50, top_p=0.9, max_new_tokens=NEW, num_samples=3, seed=3)
SAMPLED_EOS = (7, 11)


@pytest.fixture(scope="module")
def sampled(models):
    """Truncated sampling with 3 samples per prompt on one device: (model, prompts, completions)."""
    _, _, ours = models["qwen2-untied"]
    prompts = prompts_for(ours.config.vocab_size, seed=1)
    return ours, prompts, sample(ours, prompts, SAMPLED, eos_token_ids=SAMPLED_EOS)


def test_logprobs_equal_teacher_forced_recomputation(sampled):
    ours, prompts, got = sampled
    assert got.tokens.shape == (len(prompts) * 3, NEW)
    assert got.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    expected = teacher_forced_logprobs(ours, prompts, got, SAMPLED.temperature)
    assert np.abs(got.logprobs - expected).max() <= 1e-4
    # samples of one prompt differ (they share the prefill, not the randomness)
    assert len({tuple(t) for t in got.tokens[:3].tolist()}) > 1

    again = sample(ours, prompts, SAMPLED, eos_token_ids=SAMPLED_EOS)
    np.testing.assert_array_equal(again.tokens, got.tokens)
    np.testing.assert_array_equal(again.logprobs, got.logprobs)
    other_seed = dataclasses.replace(SAMPLED, seed=4)
    assert not np.array_equal(sample(ours, prompts, other_seed, eos_token_ids=SAMPLED_EOS).tokens, got.tokens)


@pytest.fixture(scope="module")
def varied(sampled):
    """The sampled case with EOS about one draw in five: completions end at different steps."""
    ours, prompts, _ = sampled
    eos = tuple(range(5, ours.config.vocab_size, 5))
    return ours, prompts, eos, sample(ours, prompts, SAMPLED, eos_token_ids=eos)


@pytest.mark.parametrize("slots", [2, 5, 0])  # 0: a slot per completion, halved as they end
def test_continuous_batching_draws_the_same_completions(varied, slots):
    ours, prompts, eos, static = varied
    got = sample(ours, prompts, SAMPLED, eos_token_ids=eos, slots=slots)
    np.testing.assert_array_equal(got.tokens, static.tokens)
    np.testing.assert_allclose(got.logprobs, static.logprobs, atol=1e-5)
    np.testing.assert_array_equal(got.lengths, static.lengths)
    assert got.finish_reasons == static.finish_reasons
    assert got.prompt_index.tolist() == static.prompt_index.tolist()
    assert len(set(static.lengths.tolist())) > 2  # EOS ends rows at different steps
    # the engine runs a decode step only for tokens after the first (drawn at the prefill)
    generated = int(static.lengths.sum()) - len(static.lengths)
    assert got.decode_steps * min(slots or 12, 12) >= generated
    assert 1.0 <= got.slot_steps_per_token() <= static.slot_steps_per_token()
    if slots == 2:  # two slots stay busy until the queue runs dry
        assert got.slot_steps_per_token() < 1.1 < static.slot_steps_per_token()
    if slots == 0:  # 12 slots, halved to 6 once at most 6 were busy
        assert got.slot_steps < 12 * got.decode_steps


def test_greedy_logprobs_and_tiny_temperature(models):
    _, _, ours = models["olmo2"]
    prompts = prompts_for(ours.config.vocab_size, seed=2)
    greedy = sample(ours, prompts, SamplingConfig(temperature=0, max_new_tokens=NEW), eos_token_ids=())
    np.testing.assert_allclose(greedy.logprobs, teacher_forced_logprobs(ours, prompts, greedy, 1.0), atol=1e-4)
    cold = sample(ours, prompts, SamplingConfig(temperature=1e-5, max_new_tokens=NEW, seed=9), eos_token_ids=())
    np.testing.assert_array_equal(cold.tokens, greedy.tokens)


def test_finish_reasons_lengths_and_stop_strings(models):
    _, _, ours = models["olmo2"]
    prompts = prompts_for(ours.config.vocab_size, seed=2)
    free = sample(ours, prompts, SamplingConfig(temperature=0, max_new_tokens=NEW), eos_token_ids=())
    eos = int(free.tokens[1, 4])  # a token greedy emits, made an EOS id
    got = sample(ours, prompts, SamplingConfig(temperature=0, max_new_tokens=NEW), eos_token_ids=(eos,))
    for row, free_row in enumerate(free.tokens):
        hits = np.flatnonzero(free_row == eos)
        length = hits[0] + 1 if hits.size else NEW
        assert got.lengths[row] == length
        assert got.finish_reasons[row] == ("eos" if hits.size else "length")
        np.testing.assert_array_equal(got.tokens[row, :length], free_row[:length])
        assert (got.tokens[row, length:] == 0).all() and (got.logprobs[row, length:] == 0).all()

    short = sample(ours, prompts, SamplingConfig(temperature=0, max_new_tokens=5), eos_token_ids=())
    assert short.tokens.shape == (4, 5) and short.finish_reasons == ["length"] * 4
    np.testing.assert_array_equal(short.tokens, free.tokens[:, :5])

    class Letters:  # decodes token t to one letter, so stop strings are easy to place
        eos_token_id = None

        def decode(self, ids, skip_special_tokens=False):
            return "".join(chr(ord("a") + t % 26) for t in ids)

    stop = Letters().decode(free.tokens[0, 2:4].tolist())
    cut = sample(ours, prompts, SamplingConfig(temperature=0, max_new_tokens=NEW, stop_strings=(stop,)),
                 eos_token_ids=(), tokenizer=Letters())  # fmt: skip
    first = Letters().decode(free.tokens[0].tolist()).index(stop) + len(stop)
    assert cut.lengths[0] == first and cut.finish_reasons[0] == "stop"
    for row in range(4):
        text = Letters().decode(free.tokens[row].tolist())
        if stop not in text:
            assert cut.finish_reasons[row] == "length" and cut.lengths[row] == NEW


def test_sharded_equals_unsharded_and_new_params_do_not_recompile(models, sampled):
    ours, prompts, unsharded = sampled
    sharded = load_hf(models["qwen2-untied"][0], LogicalMesh(make_mesh("data=2,fsdp=1,tensor=4")))
    got = sample(sharded, prompts, SAMPLED, eos_token_ids=SAMPLED_EOS)
    np.testing.assert_array_equal(got.tokens, unsharded.tokens)  # per-row keys: the same draws on any mesh
    np.testing.assert_allclose(got.logprobs, unsharded.logprobs, atol=1e-5)
    assert got.finish_reasons == unsharded.finish_reasons

    compiled = _decode._cache_size()
    graphdef, state = nnx.split(sharded)
    state = jax.tree.map(lambda x: x * 1.5, state)  # new parameters, same structure and shardings
    changed = sample(nnx.merge(graphdef, state), prompts, SAMPLED, eos_token_ids=SAMPLED_EOS)
    assert _decode._cache_size() == compiled
    assert not np.array_equal(changed.tokens, got.tokens)


def test_buckets_and_bad_inputs():
    assert [bucket(n) for n in (1, 16, 17, 100)] == [16, 16, 32, 128]
    batch = pad_prompts([[5, 6], [7]], vocab_size=10, num_samples=1)
    assert batch.tokens.shape == (2, 16)
    np.testing.assert_array_equal(batch.tokens[0, -3:], [0, 5, 6])
    np.testing.assert_array_equal(batch.segments[1, -2:], [0, 1])
    mesh = LogicalMesh(make_mesh("data=2,fsdp=4,tensor=1"))
    assert pad_prompts([[1]] * 3, 10, num_samples=4, mesh=mesh).tokens.shape[0] == 4  # 16 rows / 8
    assert pad_prompts([[1]] * 3, 10, num_samples=1, mesh=mesh).tokens.shape[0] == 8
    with pytest.raises(JaxrlError, match="empty"):
        pad_prompts([[1], []], 10, 1)
    with pytest.raises(JaxrlError, match="vocabulary"):
        pad_prompts([[1, 10]], 10, 1)
    tokens, lengths = right_padded([[5, 6], [7, 8, 9]], 10)  # the engine's prompts: padded on the right
    np.testing.assert_array_equal(tokens[:2, :3], [[5, 6, 0], [7, 8, 9]])
    assert tokens.shape == (2, 16) and lengths.tolist() == [2, 3]
    with pytest.raises(JaxrlError, match="vocabulary"):
        right_padded([[1, 10]], 10)
    assert slot_count(0, 12, mesh) == 16 and slot_count(5, 12, None) == 5 and slot_count(50, 12, None) == 12
    with pytest.raises(JaxrlError, match="slots=-1 must be >= 0"):
        slot_count(-1, 12, None)
    with pytest.raises(JaxrlError, match="top_p"):
        SamplingConfig(top_p=0)
    with pytest.raises(JaxrlError, match="temperature"):
        SamplingConfig(temperature=-1)


ROWS, VOCAB = 6, 48
_choose = jax.jit(choose_tokens, static_argnames=("greedy", "truncate"))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(0.1, 20.0),
    temperature=st.floats(0.05, 4.0),
    top_k=st.integers(0, VOCAB),
    top_p=st.floats(0.01, 1.0),
)
def test_truncated_sampling_stays_in_the_kept_set(seed, scale, temperature, top_k, top_p):
    rng = np.random.default_rng(seed)
    logits = np.round(rng.normal(0, scale, (ROWS, VOCAB)), 1).astype(np.float32)  # rounding makes ties
    keys = jax.random.split(jax.random.key(seed), ROWS)
    tokens, logprobs = _choose(jnp.asarray(logits), keys, jnp.float32(temperature), jnp.int32(top_k),
                               jnp.float32(top_p), greedy=False, truncate=True)  # fmt: skip
    scaled = logits.astype(np.float64) / np.float32(temperature)
    log_softmax = scaled - scaled.max(-1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
    for r, token in enumerate(np.asarray(tokens)):
        order = np.argsort(-scaled[r], kind="stable")
        rank = int(np.flatnonzero(order == token)[0])
        assert top_k == 0 or rank < top_k
        kept = order[: top_k or VOCAB]
        probs = np.exp(scaled[r, kept] - scaled[r, kept].max())
        probs /= probs.sum()
        assert rank == 0 or probs[:rank].sum() < top_p + 1e-5  # the mass before it is below top_p
        assert abs(float(logprobs[r]) - log_softmax[r, token]) <= 1e-5


def test_top_k_one_is_greedy():
    logits = jax.random.normal(jax.random.key(0), (ROWS, VOCAB))
    keys = jax.random.split(jax.random.key(1), ROWS)
    tokens, _ = _choose(logits, keys, jnp.float32(1.0), jnp.int32(1), jnp.float32(1.0), greedy=False, truncate=True)
    np.testing.assert_array_equal(tokens, np.argmax(logits, -1))


def test_the_engine_updates_its_cache_in_place(models):
    """The engine's state is donated: its compiled loop aliases the cache and holds no second copy
    (beside the cache, its temporaries hold the layers' weights split for decoding on CPU)."""
    from jaxrl.models.engine import lowered_run

    _, _, ours = models["olmo2"]
    c = ours.config
    config = SamplingConfig(temperature=0.7, max_new_tokens=512, num_samples=2)
    lowered, slots = lowered_run(ours, prompts_for(c.vocab_size), config, 8)
    memory = lowered.compile().memory_analysis()
    cache = 2 * c.num_layers * slots * c.num_kv_heads * (32 + 512) * c.head_dim * 4  # k and v, fp32
    assert memory.alias_size_in_bytes >= cache
    split_weights = sum(a.nbytes for a in jax.tree.leaves(ours.layers.arrays()))
    assert memory.temp_size_in_bytes < cache / 4 + split_weights
