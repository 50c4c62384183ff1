"""Shared pytest wiring: the real-part fixtures live in podckpt.devtools so that tests,
benchmarks and the demo use the same code to build root filesystems, start sandboxes and
bring up the cluster."""

pytest_plugins = [
    "podckpt.devtools.sandbox_fixtures",
    "podckpt.devtools.cluster.fixtures",
]
