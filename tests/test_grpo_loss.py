"""GRPO objective: advantages and loss variants against values worked by hand, chunked log-probs
against full logits, and loss + gradient parity with an independent PyTorch implementation on the
same tiny transformers model."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from jaxrl.models.checkpoint import load_model
from jaxrl.models.keymap import hf_names
from jaxrl.models.logprobs import completion_logprobs, token_logprobs
from jaxrl.train.grpo_loss import (
    LOSS_TYPES,
    LossSettings,
    group_advantages,
    make_loss_fn,
    per_token_objective,
    reduce_loss,
)  # fmt: skip

from jaxrl.errors import JaxrlError
from tests.hf_models import FAMILY_CASES, build_hf_model

# -- advantages -----------------------------------------------------------------------------------

REWARDS = [1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5]  # one mixed group, one tied group, G = 4


def test_group_scaled_advantages_by_hand():
    adv, tied = group_advantages(jnp.array(REWARDS), 4, "group")
    s = math.sqrt(1 / 3)  # unbiased std of [1, 0, 0, 1]
    a = 0.5 / (s + 1e-4)
    np.testing.assert_allclose(adv, [a, -a, -a, a, 0, 0, 0, 0], rtol=1e-6)
    assert tied.tolist() == [False, True]


def test_batch_scaled_and_unscaled_advantages_by_hand():
    adv, _ = group_advantages(jnp.array(REWARDS), 4, "batch")
    s = math.sqrt(1 / 7)  # unbiased std of all eight: squared deviations 4 x 0.25 over 7
    a = 0.5 / (s + 1e-4)
    np.testing.assert_allclose(adv, [a, -a, -a, a, 0, 0, 0, 0], rtol=1e-6)
    adv, _ = group_advantages(jnp.array(REWARDS), 4, "none")
    np.testing.assert_allclose(adv, [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])


def test_advantage_errors():
    with pytest.raises(JaxrlError, match="scale_rewards"):
        group_advantages(jnp.zeros(4), 2, "std")
    with pytest.raises(JaxrlError, match="groups"):
        group_advantages(jnp.zeros(5), 2)


# -- loss variants by hand ------------------------------------------------------------------------

MASK = jnp.array([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])  # the second completion has one token
ADV = jnp.array([1.0, -0.5])


def _reduced(loss_type, logp, old=None, mask=MASK, adv=ADV, **kw):
    s = LossSettings(loss_type=loss_type, max_completion_length=3, **kw)
    token_loss, stats = per_token_objective(logp, old, None, adv, mask, s)
    num, den = reduce_loss(token_loss, mask, s)
    return float(num / jnp.maximum(den, 1e-12)), token_loss, stats  # the loop's division


@pytest.mark.parametrize(
    "loss_type,expected",
    # token losses with r = 1 are -A: [-1, -1, -1] and [0.5]; their sum is -2.5 over 4 tokens
    [("grpo", (-1.0 + 0.5) / 2), ("bnpo", -2.5 / 4), ("dr_grpo", -2.5 / (2 * 3)), ("dapo", -2.5 / 4)],
)
def test_loss_types_by_hand(loss_type, expected):
    logp = jnp.log(jnp.array([[0.5, 0.25, 0.1], [0.3, 0.9, 0.9]]))
    loss, token_loss, _ = _reduced(loss_type, logp)
    np.testing.assert_allclose(token_loss, [[-1, -1, -1], [0.5, 0, 0]])
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_bnpo_averages_micro_batches_and_dapo_pools_tokens():
    """Two micro-batches (one completion each), summed then divided once, as the loop does."""
    logp = jnp.zeros((2, 3))
    totals = {}
    for loss_type in ("bnpo", "dapo"):
        s = LossSettings(loss_type=loss_type, max_completion_length=3)
        num = den = 0.0
        for i in range(2):
            tl, _ = per_token_objective(logp[i : i + 1], None, None, ADV[i : i + 1], MASK[i : i + 1], s)
            n, d = reduce_loss(tl, MASK[i : i + 1], s)
            num, den = num + n, den + d
        totals[loss_type] = float(num / den)
    np.testing.assert_allclose(totals["bnpo"], (-3 / 3 + 0.5 / 1) / 2)
    np.testing.assert_allclose(totals["dapo"], -2.5 / 4)


def test_truncated_completions_masked_still_count_as_completions():
    mask = MASK.at[0].set(0.0)  # the first completion was truncated and masked
    logp = jnp.zeros((2, 3))
    assert _reduced("grpo", logp, mask=mask)[0] == pytest.approx(0.5 / 2)  # two completions, one empty
    assert _reduced("dr_grpo", logp, mask=mask)[0] == pytest.approx(0.5 / 6)
    assert _reduced("dapo", logp, mask=mask)[0] == pytest.approx(0.5)
    assert _reduced("dapo", logp, mask=jnp.zeros((2, 3)))[0] == 0.0  # nothing left: no NaN


def test_epsilon_high_asymmetry_and_clip_counts_by_hand():
    """num_iterations 2: the second update sees ratios r = exp(logp - old) away from 1."""
    r = jnp.array([[1.3, 0.7, 1.1], [0.7, 1.3, 1.1]])
    adv = jnp.array([1.0, -1.0])
    old = jnp.zeros((2, 3))
    logp = jnp.log(r)
    mask = jnp.ones((2, 3))
    # A = +1: r=1.3 clips to 1+eps_high; r=0.7 is not clipped (min keeps the lower 0.7); 1.1 is inside.
    # A = -1: r=0.7 clips to 1-eps; r=1.3 is not clipped (min keeps -1.3); 1.1 inside.
    _, sym, stats = _reduced("dapo", logp, old, mask=mask, adv=adv, epsilon=0.2)
    np.testing.assert_allclose(sym, [[-1.2, -0.7, -1.1], [0.8, 1.3, 1.1]], rtol=1e-6)
    assert float(stats["clip_low_tokens"]) == 1 and float(stats["clip_high_tokens"]) == 1
    _, asym, stats = _reduced("dapo", logp, old, mask=mask, adv=adv, epsilon=0.2, epsilon_high=0.28)
    np.testing.assert_allclose(asym, [[-1.28, -0.7, -1.1], [0.8, 1.3, 1.1]], rtol=1e-6)
    assert float(stats["clip_high_tokens"]) == 1
    # clipped tokens pass no gradient; unclipped ones pass -A * r
    s = LossSettings(loss_type="dapo", epsilon=0.2, epsilon_high=0.5)
    grad = jax.grad(lambda lp: jnp.sum(per_token_objective(lp, old, None, adv, mask, s)[0]))(logp)
    np.testing.assert_allclose(grad, [[-1.3, -0.7, -1.1], [0.0, 1.3, 1.1]], rtol=1e-6)


def test_k3_kl_by_hand():
    logp = jnp.zeros((1, 2))
    ref = jnp.log(jnp.array([[2.0, 0.5]]))
    s = LossSettings(loss_type="dapo", beta=0.1)
    token_loss, stats = per_token_objective(logp, None, ref, jnp.zeros(1), jnp.ones((1, 2)), s)
    kl = [2 - math.log(2) - 1, 0.5 - math.log(0.5) - 1]
    np.testing.assert_allclose(stats["kl_sum"], sum(kl), rtol=1e-6)
    np.testing.assert_allclose(token_loss, [[0.1 * kl[0], 0.1 * kl[1]]], rtol=1e-6)


def test_bias_corrected_kl_by_hand():
    """use_bias_correction_kl (TRL's default) weights the KL by r: at r = 1 the value is the plain
    k3, but the gradient gains beta * kl per token; away from r = 1 the value is beta * r * kl."""
    ref = jnp.log(jnp.array([[2.0, 0.5]]))
    kl = jnp.array([[2 - math.log(2) - 1, 0.5 - math.log(0.5) - 1]])
    d_kl = jnp.array([[1 - 2.0, 1 - 0.5]])  # d kl / d logp = 1 - exp(ref - logp) at logp = 0
    mask, adv = jnp.ones((1, 2)), jnp.zeros(1)

    def token_loss(logp, old, correct):
        s = LossSettings(loss_type="dapo", beta=0.1, use_bias_correction_kl=correct)
        return per_token_objective(logp, old, ref, adv, mask, s)

    logp = jnp.zeros((1, 2))
    for correct, expected in ((False, 0.1 * d_kl), (True, 0.1 * (d_kl + kl))):
        np.testing.assert_allclose(token_loss(logp, None, correct)[0], 0.1 * kl, rtol=1e-6)
        grad = jax.grad(lambda lp, c=correct: jnp.sum(token_loss(lp, None, c)[0]))(logp)
        np.testing.assert_allclose(grad, expected, rtol=1e-6)
    old = jnp.log(jnp.array([[0.5, 2.0]]))  # r = [2, 0.5]
    loss, stats = token_loss(logp, old, True)
    np.testing.assert_allclose(loss, 0.1 * kl * jnp.array([[2.0, 0.5]]), rtol=1e-6)
    np.testing.assert_allclose(stats["kl_sum"], jnp.sum(kl * jnp.array([[2.0, 0.5]])), rtol=1e-6)  # TRL logs it so


def test_first_update_is_the_plain_policy_gradient():
    """num_iterations 1: r = 1 and d loss / d logp = -A / normaliser."""
    logp = jnp.log(jnp.array([[0.5, 0.25, 0.1], [0.3, 0.9, 0.9]]))
    s = LossSettings(loss_type="dr_grpo", max_completion_length=3)

    def loss(lp):
        tl, _ = per_token_objective(lp, None, None, ADV, MASK, s)
        num, den = reduce_loss(tl, MASK, s)
        return num / den

    np.testing.assert_allclose(jax.grad(loss)(logp), -ADV[:, None] * MASK / 6, rtol=1e-6)


# -- chunked log-probs ----------------------------------------------------------------------------


@pytest.mark.parametrize("chunk,vocab_chunk", [(3, 0), (64, 0), (3, 10)])
def test_chunked_logprobs_match_full_logits(chunk, vocab_chunk):
    k = jax.random.split(jax.random.key(0), 3)
    h = jax.random.normal(k[0], (2, 7, 16))
    w = jax.random.normal(k[1], (16, 50))
    targets = jax.random.randint(k[2], (2, 7), 0, 50)

    def full(h, w):
        logits = jnp.einsum("bcd,dv->bcv", h, w) / 0.6
        lp = jax.nn.log_softmax(logits)
        return jnp.take_along_axis(lp, targets[..., None], -1)[..., 0], -jnp.sum(jnp.exp(lp) * lp, -1)

    logp, entropy = jax.jit(lambda h, w: token_logprobs(h, w, targets, 0.6, chunk, True, vocab_chunk))(h, w)
    ref_logp, ref_entropy = full(h, w)
    np.testing.assert_allclose(logp, ref_logp, rtol=1e-5, atol=1e-5)
    # the online (vocabulary-chunked) entropy is lse - E[logit]: fine as a metric, less exact
    np.testing.assert_allclose(entropy, ref_entropy, rtol=1e-5, atol=1e-4 if vocab_chunk else 1e-5)
    lp = lambda h, w: token_logprobs(h, w, targets, 0.6, chunk, vocab_chunk_size=vocab_chunk)
    g = jax.jit(jax.grad(lambda h, w: jnp.sum(jnp.sin(lp(h, w))), (0, 1)))(h, w)
    g_ref = jax.jit(jax.grad(lambda h, w: jnp.sum(jnp.sin(full(h, w)[0])), (0, 1)))(h, w)
    for a, b in zip(g, g_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_chunks_bound_the_logits_buffer():
    """The compiled gradient holds no [B, C, V] buffer: only chunk-sized logits."""
    b, c, d, v, chunk = 2, 64, 8, 1000, 8
    h, w = jnp.ones((b, c, d)), jnp.ones((d, v)) * 0.01
    targets = jnp.zeros((b, c), jnp.int32)
    for vocab_chunk, largest in ((0, v), (250, 250)):
        lp = lambda h, w, vc=vocab_chunk: jnp.sum(token_logprobs(h, w, targets, 1.0, chunk, vocab_chunk_size=vc))
        text = jax.jit(jax.grad(lp, (0, 1))).lower(h, w).compile().as_text()
        assert f"f32[{b},{c},{v}]" not in text and f"[{b},{chunk},{largest}]" in text
        if vocab_chunk:
            assert f"[{b},{chunk},{v}]" not in text


# -- parity with PyTorch --------------------------------------------------------------------------

TEMPERATURE, G, P, C = 0.7, 2, 5, 6


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Our decoder and the transformers model with the same weights, and one GRPO batch."""
    directory = tmp_path_factory.mktemp("olmo2")
    config = FAMILY_CASES["olmo2"]
    hf = build_hf_model(config, directory)
    model = load_model(directory, param_dtype="float32")
    rng = np.random.default_rng(0)
    n = 2 * G
    prompt_lengths, completion_lengths = [5, 3, 4, 2], [6, 4, 1, 3]
    tokens = np.zeros((n, P + C), np.int32)
    segments = np.zeros((n, P + C), np.int32)
    for i in range(n):
        tokens[i, P - prompt_lengths[i] : P + completion_lengths[i]] = rng.integers(
            1, config.vocab_size, prompt_lengths[i] + completion_lengths[i]
        )
        segments[i, P - prompt_lengths[i] : P + completion_lengths[i]] = 1
    mask = segments[:, P:].astype(np.float32)
    mask[1] = 0.0  # a truncated, masked completion
    batch = {
        "tokens": tokens, "segment_ids": segments, "completion_mask": mask,
        "advantages": np.array([0.9, -0.4, 1.3, -1.1], np.float32),
    }  # fmt: skip
    logp = np.asarray(completion_logprobs(model, jnp.asarray(tokens), jnp.asarray(segments), C, TEMPERATURE))
    # stored old log-probs a little away from the current ones, so that some ratios clip
    batch["old_logprobs"] = (logp + rng.uniform(-0.35, 0.35, logp.shape)).astype(np.float32)
    batch["ref_logprobs"] = (logp + rng.uniform(-0.5, 0.5, logp.shape)).astype(np.float32)
    return model, hf, config, batch


def torch_objective(hf, batch, loss_type, beta, num_iterations, eps_low=0.2, eps_high=0.28, bias_correction=True):
    """TRL's GRPO objective written directly in PyTorch over full logits (bias_correction: TRL's
    use_bias_correction_kl, the KL weighted by the unclipped ratio)."""
    tokens = torch.tensor(batch["tokens"], dtype=torch.long)
    attention = torch.tensor(batch["segment_ids"] > 0, dtype=torch.long)
    positions = (attention.cumsum(1) - 1).clamp(min=0)
    logits = hf(input_ids=tokens, attention_mask=attention, position_ids=positions).logits
    logits = logits[:, P - 1 : P + C - 1] / TEMPERATURE
    logp = torch.log_softmax(logits.float(), -1).gather(-1, tokens[:, P:, None])[..., 0]
    mask = torch.tensor(batch["completion_mask"])
    adv = torch.tensor(batch["advantages"])[:, None]
    old = torch.tensor(batch["old_logprobs"]) if num_iterations > 1 else logp.detach()
    ratio = torch.exp(logp - old)
    per_token = -torch.min(ratio * adv, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv)
    if beta > 0:
        ref = torch.tensor(batch["ref_logprobs"])
        kl = torch.exp(ref - logp) - (ref - logp) - 1
        per_token = per_token + beta * (kl * ratio if bias_correction else kl)
    if loss_type == "grpo":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "dr_grpo":
        return (per_token * mask).sum() / (per_token.shape[0] * C)
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)  # bnpo and dapo: one micro-batch


def _settings(loss_type, beta, num_iterations, bias_correction=True):
    return LossSettings(loss_type=loss_type, epsilon=0.2, epsilon_high=0.28, beta=beta, max_completion_length=C,
                        temperature=TEMPERATURE, logprob_chunk_size=4, use_old_logprobs=num_iterations > 1,
                        use_bias_correction_kl=bias_correction)  # fmt: skip


def _assert_matches_torch(value, grads, hf, config, batch, loss_type, beta, num_iterations, bias_correction=True):
    hf.zero_grad()
    ref = torch_objective(hf, batch, loss_type, beta, num_iterations, bias_correction=bias_correction)
    ref.backward()
    np.testing.assert_allclose(float(value), ref.item(), rtol=1e-5, atol=1e-6)
    hf_grads = {name: p.grad.numpy() for name, p in hf.named_parameters()}
    largest = 0.0
    for name, entry, layer in hf_names(config):
        ours = grads
        for key in entry.path:
            ours = ours[key]
        ours = np.asarray(ours if layer is None else ours[layer])
        theirs = entry.to_ours(hf_grads[name])
        largest = max(largest, float(np.abs(theirs).max()))
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0, err_msg=name)
    assert largest > 1e-3  # the gradients are not trivially zero


@pytest.fixture(scope="module")
def policy_vjp(tiny):
    """(completion log-probs, their VJP): the part of the objective that touches the params, compiled once."""
    model, _, _, batch = tiny
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    tokens, segments = jnp.asarray(batch["tokens"]), jnp.asarray(batch["segment_ids"])

    def logp_of(p):
        return completion_logprobs(nnx.merge(graphdef, p), tokens, segments, C, TEMPERATURE, 4)

    logp, pullback = jax.vjp(logp_of, params)
    return logp, jax.jit(pullback)


@pytest.mark.parametrize(
    "loss_type,beta,num_iterations,bias_correction",
    [(t, beta, n, True) for t in LOSS_TYPES for beta in (0.0, 0.04) for n in (1, 2)]
    + [("grpo", 0.04, n, False) for n in (1, 2)],  # the KL without TRL's ratio weight
)
def test_objective_and_gradients_match_pytorch(tiny, policy_vjp, loss_type, beta, num_iterations, bias_correction):
    """Every loss_type x beta x num_iterations (and the KL weight off): d loss / d params = VJP of
    the token log-probs with d loss / d logp, compared with torch's autograd through the model."""
    _, hf, config, batch = tiny
    logp, pullback = policy_vjp
    s = _settings(loss_type, beta, num_iterations, bias_correction)
    b = {k: jnp.asarray(v) for k, v in batch.items()}

    def objective(lp):
        old = b["old_logprobs"] if s.use_old_logprobs else None
        token_loss, _ = per_token_objective(lp, old, b["ref_logprobs"], b["advantages"], b["completion_mask"], s)
        num, den = reduce_loss(token_loss, b["completion_mask"], s)
        return num / den

    value, d_logp = jax.jit(jax.value_and_grad(objective))(logp)
    (grads,) = pullback(d_logp)
    _assert_matches_torch(value, grads, hf, config, batch, loss_type, beta, num_iterations, bias_correction)


@pytest.mark.parametrize("loss_type,beta,num_iterations", [("dr_grpo", 0.0, 1), ("grpo", 0.04, 2)])
def test_training_loss_fn_matches_pytorch(tiny, loss_type, beta, num_iterations):
    """The loss function the training loop calls, end to end under jit."""
    model, hf, config, batch = tiny
    loss_fn = make_loss_fn(_settings(loss_type, beta, num_iterations))
    graphdef, state = nnx.split(model)
    device_batch = {k: jnp.asarray(v) for k, v in batch.items()}

    def loss(p):
        num, den, _ = loss_fn(nnx.merge(graphdef, p), device_batch)
        return num / den

    value, grads = jax.jit(jax.value_and_grad(loss))(nnx.to_pure_dict(state))
    _assert_matches_torch(value, grads, hf, config, batch, loss_type, beta, num_iterations)
