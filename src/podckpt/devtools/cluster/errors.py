"""Errors of the local cluster tooling.

A missing prerequisite must reach a human as one line that names what is missing and how to
get it (issue 3, "Bad input"), so the CLI catches `ClusterError` and prints only its message,
and the pytest fixtures turn `PrerequisiteError` into a skip (or a failure under CI).
"""

from __future__ import annotations


class ClusterError(Exception):
    """Something the cluster tooling could not do; the message is meant for a human."""


class PrerequisiteError(ClusterError):
    """A prerequisite (root, a tool, network to the Go proxy, a free port) is missing.

    Kept distinct from other failures because the fixtures skip on it outside CI, while a
    component that crashes is always a failure.
    """
