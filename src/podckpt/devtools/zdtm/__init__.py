"""CRIU's zdtm static tests under the agent and under raw CRIU (the conformance suite)."""
