"""The podckpt agent: PID 1 of a checkpointed container (standard library only).

It starts the application fresh or restores it with CRIU, supervises it like an init process,
and checkpoints it on SIGTERM, on request and periodically. See docs/agent.md.
"""

AGENT_VERSION = "0.1.0"
