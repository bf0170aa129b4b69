"""The tiny base model of the miniature: pre-trained on the invented world through the SFT loop.

A byte-level BPE tokenizer is trained on the corpus, a random OLMo-2-shaped model is written as a
HF directory, and `jaxrl.train.sft.run` trains it on the corpus conversations (loss over the whole
sequence, no system prompt added: a conversation carries its own). The last checkpoint is exported
as a HF directory: the "instruct model" the study starts from.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from jaxrl import synthetic
from jaxrl.model_files import latest_checkpoint

SHIPPED = Path(__file__).parent / "base_model"  # the default base, made by `jaxrl reproduce --rebuild-base`
BASE_SHAPE = dict(
    vocab_size=512, hidden_size=128, intermediate_size=384, num_layers=4, num_heads=4, num_kv_heads=4,
    head_dim=32, max_position_embeddings=512,
)  # fmt: skip


@dataclass(frozen=True)
class BaseSpec:
    """Everything the base model is a function of (its cache key)."""

    seed: int = 0
    num_countries: int = 24
    num_problems: int = 3000  # word problems seen in pre-training (disjoint from GRPO/SFT/test ones)
    num_conversations: int = 48000
    hasty_share: float = 0.5  # formatted word-problem answers that are guesses (see synthetic.py)
    steps: int = 1500
    batch_size: int = 32
    learning_rate: float = 3e-3
    weight_decay: float = 0.01  # decoupled (AdamW); OLMo-2 was pre-trained with 0.1

    def key(self) -> str:
        return "-".join(f"{v}" for v in self.__dict__.values())


def shipped_base(spec: BaseSpec) -> Path | None:
    """The base model shipped with the package, when it was made from `spec`."""
    marker = SHIPPED / "base_spec.json"
    if marker.is_file() and json.loads(marker.read_text()) == asdict(spec):
        return SHIPPED
    return None


def ship_base(spec: BaseSpec, built: Path) -> Path:
    """Copies a freshly built base (HF directory) into the package, with the spec it came from."""
    shutil.rmtree(SHIPPED, ignore_errors=True)
    shutil.copytree(built, SHIPPED)
    (SHIPPED / "base_spec.json").write_text(json.dumps(asdict(spec), indent=1) + "\n")
    return SHIPPED


def world_and_pools(spec: BaseSpec, num_train: int, num_test: int):
    """The world, the pre-training problems, and the disjoint train and test problems."""
    world = synthetic.make_world(spec.seed, spec.num_countries)
    pretrain = synthetic.problems(spec.seed, spec.num_problems)
    seen = {p.question for p in pretrain}
    train = synthetic.problems(spec.seed + 1, num_train, exclude=seen)
    test = synthetic.problems(spec.seed + 2, num_test, exclude=seen | {p.question for p in train})
    return world, pretrain, train, test


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def build_base(spec: BaseSpec, directory: Path, log=print) -> Path:
    """Pre-trains the base model into `directory/hf` (skipped when already there)."""
    from jaxrl.models.config import preset
    from jaxrl.models.convert import convert
    from jaxrl.models.hf_io import export_hf
    from jaxrl.models.params import init_decoder
    from jaxrl.tiny import EOS, PAD, build_tokenizer
    from jaxrl.train import sft

    final = directory / "hf"
    if (final / "model.safetensors").is_file():
        return final
    world, pool, _, _ = world_and_pools(spec, 0, 0)
    chats = synthetic.pretraining_conversations(
        world, pool, spec.seed, spec.num_conversations, hasty_share=spec.hasty_share
    )
    corpus = write_jsonl(directory / "corpus.jsonl", ({"messages": c} for c in chats))
    init = directory / "init"
    texts = [m["content"] for c in chats[:4000] for m in c] + [synthetic.SYSTEM_PROMPT]
    tokenizer = build_tokenizer(init, texts, BASE_SHAPE["vocab_size"])
    eos, pad = tokenizer.convert_tokens_to_ids(EOS), tokenizer.convert_tokens_to_ids(PAD)
    config = preset("tiny-olmo2", **BASE_SHAPE, bos_token_id=eos, eos_token_ids=(eos,), pad_token_id=pad)
    export_hf(init_decoder(config, seed=spec.seed), init)
    log(f"base: pre-training a {config.num_params() / 1e6:.2f}M-parameter model for {spec.steps} steps")
    run = sft.run(
        None,
        [
            f"model.path={init}",
            f"data.dataset_name={corpus}",
            "chat.system_prompt=null",
            f"sft.batch_size={spec.batch_size}",
            "sft.max_length=256",
            "sft.pad_to_multiple_of=32",
            f"optimizer.learning_rate={spec.learning_rate}",
            "optimizer.lr_scheduler_type=cosine",
            "optimizer.warmup_ratio=0.05",
            "optimizer.max_grad_norm=1.0",
            f"optimizer.weight_decay={spec.weight_decay}",
            f"loop.max_steps={spec.steps}",
            f"loop.output_dir={directory / 'run'}",
            f"loop.seed={spec.seed}",
            "loop.logging_steps=50",
            f"checkpoint.save_steps={max(spec.steps // 4, 1)}",
            "checkpoint.save_total_limit=1",
        ],
    )
    last = latest_checkpoint(run)
    tmp = directory / "hf.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    convert(last, tmp)
    tmp.rename(final)
    return final
