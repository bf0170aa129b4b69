"""Model configuration: one frozen dataclass for every supported family.

Llama, Qwen2 and OLMo-2 differ only by flags here (norm placement, QK-norm, q/k/v bias, tied
embeddings, rope scaling). `from_hf_config` / `to_hf_config` translate Hugging Face `config.json`
dictionaries; `PRESETS` holds the study's and common models plus tiny test shapes.
"""

from __future__ import annotations

import dataclasses
import numbers
from pathlib import Path
from typing import Any, ClassVar

import jax.numpy as jnp

from jaxrl.errors import JaxrlError
from jaxrl.knobs import check_knobs, check_value, domain_of, numeric_fields
from jaxrl.model_files import read_config, read_json_object

FAMILIES = ("olmo2", "qwen2", "llama")
ARCHITECTURES = {"olmo2": "Olmo2ForCausalLM", "qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# Families whose HF embedding is nn.Embedding(..., padding_idx=config.pad_token_id).
PADDING_IDX_FAMILIES = ("olmo2", "qwen2", "llama")
ATTENTION = ("auto", "blockwise", "xla", "cudnn", "splash")  # the implementations of jaxrl.models.attention
DECODE_LAYERS = ("auto", "scan", "split")  # how a decode loop runs the layers (jaxrl.models.decoder.decode_layers)


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """HF `rope_parameters` beyond theta: `linear` or `llama3` (Llama 3.1/3.2)."""

    DOMAINS: ClassVar[dict[str, str]] = {  # jaxrl.knobs
        "factor": "> 0", "low_freq_factor": "> 0", "high_freq_factor": "> 0",
        "original_max_position_embeddings": ">= 1",
    }  # fmt: skip

    rope_type: str = "llama3"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self):
        check_knobs(self, "rope_scaling.")
        if self.rope_type == "llama3" and not self.high_freq_factor > self.low_freq_factor:
            raise JaxrlError(
                f"rope_scaling: high_freq_factor ({self.high_freq_factor}) must be larger than low_freq_factor "
                f"({self.low_freq_factor})"
            )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture and numerics of a decoder. Shapes: D=hidden_size, F=intermediate_size."""

    DOMAINS: ClassVar[dict[str, str]] = {  # jaxrl.knobs
        "vocab_size": ">= 1", "hidden_size": ">= 1", "intermediate_size": ">= 1", "num_layers": ">= 1",
        "num_heads": ">= 1", "num_kv_heads": ">= 1", "head_dim": ">= 1", "rope_theta": "> 0", "rms_norm_eps": ">= 0",
        "max_position_embeddings": ">= 1", "bos_token_id": "any", "eos_token_ids": "any", "pad_token_id": "any",
        "scan_unroll": ">= 0; 0 = the backend's default",
    }  # fmt: skip

    family: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 512
    intermediate_size: int = 1376
    num_layers: int = 8
    num_heads: int = 8
    num_kv_heads: int = 8
    head_dim: int = 64
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 4096
    post_norm: bool = False  # OLMo-2: h = x + norm(attn(x)) instead of h = x + attn(norm(x))
    qk_norm: bool = False  # OLMo-2: RMSNorm over the full q / k projection, before RoPE
    norm_weight_fp32: bool = False  # OLMo-2: multiply by the norm weight in fp32, then cast
    qkv_bias: bool = False  # Qwen2 (and Llama with attention_bias)
    o_bias: bool = False  # Llama with attention_bias
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    # HF's nn.Embedding(padding_idx=pad_token_id): the lookup gives the pad row no gradient (a tied
    # lm_head still trains it through the output projection). True for every supported family.
    freeze_pad_embedding: bool = True
    dtype: str = "float32"  # compute dtype of matmuls
    param_dtype: str = "float32"
    remat: bool = False  # recompute each layer in the backward pass
    # layers per iteration of the layer scan without a cache (training, scoring); 0: the backend's
    # default, `decoder.layer_unroll` (all layers on CPU, 1 elsewhere)
    scan_unroll: int = 0
    # a decode loop's layers: scan the stacked weights, or split them once before the loop and run
    # the layers one after another; auto: split on CPU, scan elsewhere (`decoder.decode_layers`)
    decode_layers: str = "auto"
    attention: str = "auto"  # auto | blockwise | xla | cudnn (see jaxrl.models.attention)

    def __post_init__(self):
        check_knobs(self)
        if self.family not in FAMILIES:
            raise JaxrlError(f"unknown model family {self.family!r}; supported: {', '.join(FAMILIES)}")
        if self.num_heads % self.num_kv_heads:
            raise JaxrlError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise JaxrlError(f"{name}={getattr(self, name)!r}; choose one of {sorted(DTYPES)}")
        if self.attention not in ATTENTION:
            raise JaxrlError(f"attention={self.attention!r}; choose one of {', '.join(ATTENTION)}")
        if self.decode_layers not in DECODE_LAYERS:
            raise JaxrlError(f"decode_layers={self.decode_layers!r}; choose one of {', '.join(DECODE_LAYERS)}")

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def weight_dtype(self):
        return DTYPES[self.param_dtype]

    @property
    def frozen_embedding_row(self) -> int | None:
        """The embedding row the lookup gives no gradient, as torch reads `padding_idx` (a negative
        id counts from the end), or None (no pad id, the flag off, or an id outside the vocabulary)."""
        pad = self.pad_token_id
        if not self.freeze_pad_embedding or pad is None or not -self.vocab_size <= pad < self.vocab_size:
            return None
        return pad % self.vocab_size

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Parameter count, worked from the shapes (embedding and lm_head counted once if tied)."""
        d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        q, kv = self.num_heads * hd, self.num_kv_heads * hd
        attn = d * q + 2 * d * kv + q * d
        attn += (q + 2 * kv) * self.qkv_bias + d * self.o_bias + (q + kv) * self.qk_norm
        layer = attn + 3 * d * f + 2 * d
        embed = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * layer + embed + d

    # --- Hugging Face config.json -------------------------------------------------------------

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any], **overrides) -> ModelConfig:
        """Reads a HF `config.json` dict (transformers 4.x `rope_scaling` or 5.x `rope_parameters`).

        Every key is checked before use: required ones present and not null, each of its type and in
        its field's domain, and the values that must agree (heads and kv heads, head_dim, the rope
        type's fields); a JaxrlError names the file (`read_json_object` records it) and the key."""
        r = _HFReader(hf)
        for key in HF_REQUIRED_KEYS:
            r.get(key, object)  # present and not null; each one's type and domain where it is read
        model_type = r.get("model_type", str)
        if model_type not in FAMILIES:
            raise r.error(f"unsupported model_type {model_type!r}; supported: {', '.join(FAMILIES)}")
        if (r.get("hidden_act", str, required=False) or "silu") != "silu":
            raise r.error(f"unsupported hidden_act {hf['hidden_act']!r}; only 'silu' is supported")
        if r.get("mlp_bias", bool, required=False):
            raise r.error("unsupported mlp_bias=true")
        if r.get("use_sliding_window", bool, required=False):
            raise r.error("unsupported use_sliding_window=true (Qwen2 sliding-window attention)")
        hidden, heads = r.number("hidden_size", "hidden_size"), r.number("num_attention_heads", "num_heads")
        kv_heads = r.number("num_key_value_heads", "num_kv_heads", required=False) or heads
        if heads % kv_heads:
            raise r.error(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}")
        head_dim = r.number("head_dim", "head_dim", required=False)
        if head_dim is None:
            if hidden % heads:
                raise r.error(f"no head_dim, and hidden_size={hidden} is not a multiple of num_attention_heads={heads}")
            head_dim = hidden // heads
        theta, scaling = r.rope()
        eos = hf.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        for key, value in (("bos_token_id", hf.get("bos_token_id")), ("pad_token_id", hf.get("pad_token_id"))):
            r.check(value, key, key)
        r.check(eos_ids, "eos_token_id", "eos_token_ids")
        bias = bool(r.get("attention_bias", bool, required=False))
        eps = r.number("rms_norm_eps", "rms_norm_eps", required=False)
        max_positions = r.number("max_position_embeddings", "max_position_embeddings", required=False)
        fields = dict(
            family=model_type,
            vocab_size=r.number("vocab_size", "vocab_size"),
            hidden_size=hidden,
            intermediate_size=r.number("intermediate_size", "intermediate_size"),
            num_layers=r.number("num_hidden_layers", "num_layers"),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            rope_theta=theta,
            rope_scaling=scaling,
            rms_norm_eps=1e-6 if eps is None else float(eps),
            max_position_embeddings=4096 if max_positions is None else max_positions,
            post_norm=model_type == "olmo2",
            qk_norm=model_type == "olmo2",
            norm_weight_fp32=model_type == "olmo2",
            qkv_bias=model_type == "qwen2" or bias,
            o_bias=model_type == "llama" and bias,
            tie_word_embeddings=bool(r.get("tie_word_embeddings", bool, required=False)),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=eos_ids,
            pad_token_id=hf.get("pad_token_id"),
            freeze_pad_embedding=model_type in PADDING_IDX_FAMILIES,
        )
        return cls(**{**fields, **overrides})

    def to_hf_config(self) -> dict[str, Any]:
        """A HF `config.json` dict that transformers loads into the matching architecture."""
        rope: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling is not None:
            rope = {**dataclasses.asdict(self.rope_scaling), "rope_theta": self.rope_theta}
            if rope["rope_type"] == "linear":
                rope = {"rope_type": "linear", "factor": rope["factor"], "rope_theta": self.rope_theta}
        eos = list(self.eos_token_ids)
        hf = {
            "architectures": [ARCHITECTURES[self.family]],
            "model_type": self.family,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta,
            "rope_parameters": rope,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
            "pad_token_id": self.pad_token_id,
            "torch_dtype": self.param_dtype,
        }
        if self.family == "llama":
            hf["attention_bias"] = self.o_bias
            hf["mlp_bias"] = False
        if self.family == "olmo2":
            hf["attention_bias"] = False
        if self.family == "qwen2":
            hf["use_sliding_window"] = False
        if self.rope_scaling is not None:
            hf["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
        return hf

    @classmethod
    def from_model_path(cls, path: str | Path, **overrides) -> ModelConfig:
        """The config of a HF directory, an Orbax checkpoint or a run's checkpoint (its config.json is
        found as `model_files.find_config` finds it), checked as `from_hf_config` checks it."""
        return cls.from_hf_config(read_config(path), **overrides)

    @classmethod
    def from_hf_dir(cls, directory: str | Path, **overrides) -> ModelConfig:
        path = Path(directory) / "config.json"
        if not Path(directory).is_dir():
            raise JaxrlError(f"model directory {directory} does not exist")
        if not path.exists():
            raise JaxrlError(f"{directory} has no config.json; is it a Hugging Face model directory?")
        return cls.from_hf_config(read_json_object(path), **overrides)


class _HFReader:
    """Typed, checked reads of one config.json dict; errors name its file and the key."""

    RESTORE = "restore it from the model's source"

    def __init__(self, hf: dict[str, Any]):
        self.hf = hf
        self.where = str(getattr(hf, "source", None) or "config.json")

    def error(self, what: str) -> JaxrlError:
        return JaxrlError(f"{self.where}: {what}")

    def get(self, key: str, kind: type, required: bool = True, table: dict | None = None, prefix: str = ""):
        """`table[key]` (the config by default) as `kind`; None when absent or null and not required."""
        table = self.hf if table is None else table
        value = table.get(key)
        if value is None:
            if required:
                state = "null" if key in table else "missing"
                raise self.error(f"{prefix}{key} is {state}; it is required ({self.RESTORE})")
            return None
        wrong = not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))
        if kind is not object and wrong:
            raise self.error(f"{prefix}{key} must be {_KIND_NAMES[kind]}, got {value!r} ({self.RESTORE})")
        return value

    def check(self, value: Any, key: str, field: str, cls: type = None) -> None:
        """`value` of `key` within the domain of `cls.field` (ModelConfig's by default)."""
        cls = cls or ModelConfig
        try:
            check_value(value, domain_of(cls, field), numeric_fields(cls)[field] is int, key)
        except JaxrlError as e:
            raise self.error(f"{e} ({self.RESTORE})") from None

    def number(self, key: str, field: str, required: bool = True, table: dict | None = None, cls=None, prefix=""):
        """An int or float key (of `table`, named `prefix` + key), checked against the domain of the
        field it becomes."""
        value = self.get(key, numbers.Real, required, table, prefix)
        if value is not None:
            self.check(value, prefix + key, field, cls)
        return value

    def rope(self) -> tuple[float, RopeScaling | None]:
        """rope_theta and the scaling of `rope_parameters` (5.x) or `rope_scaling` (4.x), per rope type."""
        key = "rope_parameters" if self.hf.get("rope_parameters") is not None else "rope_scaling"
        rope = self.get(key, dict, required=False) or {}
        theta = self.number("rope_theta", "rope_theta", required=False, table=rope, prefix=f"{key}.")
        if theta is None:
            theta = self.number("rope_theta", "rope_theta", required=False)
        theta = 10000.0 if theta is None else float(theta)
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type == "default":
            return theta, None
        if rope_type not in ("linear", "llama3"):
            raise self.error(f"unsupported rope type {rope_type!r}; supported: default, linear, llama3")
        names = ("factor",) if rope_type == "linear" else LLAMA3_ROPE_KEYS
        values = {k: self.number(k, k, table=rope, cls=RopeScaling, prefix=f"{key}.") for k in names}
        values = {k: v if numeric_fields(RopeScaling)[k] is int else float(v) for k, v in values.items()}
        if rope_type == "llama3" and not values["high_freq_factor"] > values["low_freq_factor"]:
            raise self.error(
                f"{key}.high_freq_factor ({values['high_freq_factor']}) must be larger than {key}.low_freq_factor "
                f"({values['low_freq_factor']}) ({self.RESTORE})"
            )
        try:
            return theta, RopeScaling(rope_type, **values)
        except JaxrlError as e:
            raise self.error(f"{e} ({self.RESTORE})") from None


_KIND_NAMES = {str: "a string", bool: "true or false", dict: "an object ({...})", numbers.Real: "a number"}
HF_REQUIRED_KEYS = (
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
)  # fmt: skip
LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def _olmo2(layers, hidden, inter, heads, **kw) -> ModelConfig:
    return ModelConfig(
        family="olmo2", vocab_size=100352, hidden_size=hidden, intermediate_size=inter,
        num_layers=layers, num_heads=heads, num_kv_heads=heads, head_dim=hidden // heads,
        rope_theta=500000.0, rms_norm_eps=1e-6, max_position_embeddings=4096, post_norm=True,
        qk_norm=True, norm_weight_fp32=True, bos_token_id=100257, eos_token_ids=(100257,),
        pad_token_id=100277, **kw,
    )  # fmt: skip


def _qwen25(layers, hidden, inter, heads, kv_heads, vocab, tied, max_pos) -> ModelConfig:
    return ModelConfig(
        family="qwen2", vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
        num_layers=layers, num_heads=heads, num_kv_heads=kv_heads, head_dim=hidden // heads,
        rope_theta=1000000.0, rms_norm_eps=1e-6, max_position_embeddings=max_pos, qkv_bias=True,
        tie_word_embeddings=tied, bos_token_id=151643, eos_token_ids=(151645, 151643),
        pad_token_id=151643,
    )  # fmt: skip


def _llama3(layers, hidden, inter, heads, kv_heads, head_dim, tied, factor) -> ModelConfig:
    return ModelConfig(
        family="llama", vocab_size=128256, hidden_size=hidden, intermediate_size=inter,
        num_layers=layers, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
        rope_theta=500000.0, rope_scaling=RopeScaling("llama3", factor, 1.0, 4.0, 8192),
        rms_norm_eps=1e-5, max_position_embeddings=131072, tie_word_embeddings=tied,
        bos_token_id=128000, eos_token_ids=(128001, 128008, 128009),
    )  # fmt: skip


PRESETS: dict[str, ModelConfig] = {
    "olmo2-1124-7b": _olmo2(32, 4096, 11008, 32),
    "olmo2-1124-13b": _olmo2(40, 5120, 13824, 40),
    "olmo2-0425-1b": _olmo2(16, 2048, 8192, 16),
    "qwen2.5-0.5b": _qwen25(24, 896, 4864, 14, 2, 151936, True, 32768),
    "qwen2.5-1.5b": _qwen25(28, 1536, 8960, 12, 2, 151936, True, 131072),
    "qwen2.5-7b": _qwen25(28, 3584, 18944, 28, 4, 152064, False, 131072),
    "llama3.2-1b": _llama3(16, 2048, 8192, 32, 8, 64, True, 32.0),
    "llama3.1-8b": _llama3(32, 4096, 14336, 32, 8, 128, False, 8.0),
    # Tiny shapes for tests and CPU runs.
    "tiny-olmo2": ModelConfig(
        family="olmo2", vocab_size=384, hidden_size=64, intermediate_size=128, num_layers=2,
        num_heads=4, num_kv_heads=4, head_dim=16, rope_theta=500000.0, post_norm=True,
        qk_norm=True, norm_weight_fp32=True,
    ),
    "tiny-qwen2": ModelConfig(
        family="qwen2", vocab_size=384, hidden_size=64, intermediate_size=128, num_layers=2,
        num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=1000000.0, qkv_bias=True,
        tie_word_embeddings=True,
    ),
    "tiny-llama": ModelConfig(
        family="llama", vocab_size=384, hidden_size=64, intermediate_size=128, num_layers=2,
        num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=500000.0, rms_norm_eps=1e-5,
        rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0, 64), max_position_embeddings=256,
    ),
}  # fmt: skip


def preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise JaxrlError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides)
