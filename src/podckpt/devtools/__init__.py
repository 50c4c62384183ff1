"""Developer tools: the container-like test sandbox, its root filesystems and the local
Kubernetes cluster. Used by tests, benchmarks and the demo; never by the agent."""
