"""`python3 -m podckpt.agent`: the same as the `podckpt-agent` command."""

from podckpt.agent.cli import main

main()
