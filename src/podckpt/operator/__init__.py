"""The operator: everything that runs in the cluster's control plane rather than in pods.

    settings    OperatorSettings from the environment (PODCKPT_*)
    domain/     pure Kubernetes knowledge: workload identity, volume and grace-period sizing
    kube/       I/O: the API client, the kopf runner shared by both processes
    certs       the webhook's self-signed TLS bootstrap
    webhook/    mutating admission (`python -m podckpt.operator.webhook`)
    controller/ volumes, events, orphans (`python -m podckpt.operator.controller`)

`domain` imports neither `kube` nor any client library (an import-linter contract), so every
rule there has a unit test without a cluster.
"""
