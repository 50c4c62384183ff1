"""Kubernetes knowledge shared by the webhook and the controller: workload identity and the
sizing of volumes and grace periods. Pure functions over plain manifests (dicts), so that both
processes and the unit tests agree by construction; no I/O, no client library."""
