"""Kubernetes knowledge shared by the webhook and the controller: workload identity, sizing
of volumes and grace periods, and the names of podckpt's own annotations. Pure functions over
plain manifests (dicts), so that both processes and the unit tests agree by construction."""
