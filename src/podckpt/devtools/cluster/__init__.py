"""The local single-node Kubernetes cluster used by tests and the demo."""
