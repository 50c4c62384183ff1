"""The controller: provisions each identity's checkpoint PVC, owned by the workload; reports
what happened to checkpointed pods as Kubernetes Events; reports orphaned volumes.

Its one write to user pods is the removal of podckpt's own scheduling gate once a pod's
checkpoint volume is usable (`claims`); otherwise kopf event handlers and indices only (no
finalizers, no annotations). `volumes` and `events` are pure; `handlers` is the thin kopf
layer, `claims` the volumes' I/O, `common` what they share.
"""
