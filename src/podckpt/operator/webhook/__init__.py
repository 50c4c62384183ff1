"""The mutating admission webhook: injects the agent into pods that opt in to checkpointing.

`mutate` is the pure pipeline, `imageconfig` reads ENTRYPOINT/CMD from registries, `slots`
hands out Deployment slots, `handlers` is the thin kopf layer, `python -m podckpt.operator.webhook`
runs it.
"""
