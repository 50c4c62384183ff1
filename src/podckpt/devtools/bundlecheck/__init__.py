"""Test fixtures for the agent bundle: root filesystems of several kinds (busybox, static,
Debian minbase, musl) holding a small counter program, and a raw CRIU dump/restore cycle run
with the bundle's CRIU in the sandbox (`probe.py`). They test the bundle; they do not ship in
it."""
