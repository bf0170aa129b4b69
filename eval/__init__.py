"""Evaluation: the study's benchmarks, pass@k / maj@k with standard errors, KL to a base model.

- `runner`: `EvalConfig` (the study's decoding defaults), `evaluate(models, config, out_dir)`, and
  `eval_cli` behind `jaxrl eval`.
- `tasks`: `TASKS` by name, `make_task`; the benchmarks in `maths` (MATH-500, AIME24, GSM8K),
  `choice` (GPQA-Diamond, MMLU generative and log-likelihood, MMLU-Pro) and `ifeval` (with its
  instruction checkers); `task` holds the `Task` / `Item` / `Scored` interface.
- `metrics`: `pass_at_k`, `majority_correct`, `mean_and_stderr`, `summarize`.
- `forced`: teacher-forced `continuation_logprobs`; `kl`: `mean_token_kl` (KL(base || tuned)).
- `generate`: completions through the shared sampler; `prompts`: chat turns -> token ids;
  `data`: rows from files or the hub; `models`: what `--model` may name; `report`: the reports.
"""
