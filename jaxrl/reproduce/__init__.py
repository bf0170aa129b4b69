"""`jaxrl reproduce`: the study in miniature on a CPU, end to end.

Like `jaxrl/cli.py`, this package sits above the floors and wires them together: it drives the
same public entry points a TPU user calls (`jaxrl.train.sft.run`, `jaxrl.train.grpo.run`,
`jaxrl.eval`, `jaxrl.analysis`) on a tiny OLMo-2-shaped model pre-trained on an invented world
(`jaxrl.synthetic`). The core modules never import it.
"""
