"""The mutating admission webhook: injects the agent into pods that opt in to checkpointing.

The pure pipeline is `decide` (whether and how a pod is injected) and `inject` (the injected
pod and its patch), with `reserved_names` shared by both; `imageconfig` reads ENTRYPOINT/CMD
from registries, `slots` hands out Deployment slots, `handlers` is the thin kopf layer,
`python -m podckpt.operator.webhook` runs it.
"""
