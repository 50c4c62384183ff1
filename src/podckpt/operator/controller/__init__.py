"""The controller: provisions each identity's checkpoint PVC, owned by the workload; reports
what happened to checkpointed pods as Kubernetes Events; reports orphaned volumes.

It never writes to user pods: kopf event handlers and indices only (no finalizers, no
annotations). `volumes` and `events` are pure; `handlers` is the thin kopf layer.
"""
