"""pytest fixtures for the cluster tiers: ``apiserver_cluster`` and ``node_cluster``.

Both are session-scoped and share one control plane: the node tier is started on top of the
apiserver tier the session already runs. Both return a `Cluster` (kubeconfig, env,
api_client(), kubectl(), logs_dir, token_kubeconfig(); for the node tier also load_image(),
registry, push_image()).

Outside CI a missing prerequisite (not root, no etcd, no Go...) skips with the reason; with
``CI=true`` it fails, because CI must really run these tests. Teardown always stops every
process and removes every mount, bridge and cgroup; when a test of the session failed, the
components' logs are kept and their path is printed in the summary.

The Kubernetes binaries are built (cold: minutes) right after collection when a selected test
is marked ``apiserver`` or ``node`` or uses a cluster fixture, outside any test's timeout.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Generator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from podckpt.devtools.cluster.binaries import cached, ensure_binaries
from podckpt.devtools.cluster.cluster import (
    TIER_APISERVER,
    TIER_NODE,
    Cluster,
    check_prerequisites,
)
from podckpt.devtools.cluster.errors import ClusterError, PrerequisiteError

_CLUSTER_MARKERS = ("apiserver", "node")
_failed = pytest.StashKey[bool]()
_build_error = pytest.StashKey[ClusterError]()
_kept_logs = pytest.StashKey[list[str]]()


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _unavailable(reason: str) -> NoReturn:
    if _in_ci():
        pytest.fail(f"cluster prerequisite missing under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Build the Kubernetes binaries before any test runs if a cluster test is selected."""
    del session
    if not any(_needs_cluster(item) for item in items):
        return
    if cached() is not None or os.geteuid() != 0:
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")

    def log(msg: str) -> None:
        if reporter is not None:
            reporter.write_line(f"podckpt cluster: {msg}")

    try:
        ensure_binaries(log=log)
    except ClusterError as e:
        config.stash[_build_error] = e  # reported by the fixtures, as a skip or a failure


def _needs_cluster(item: pytest.Item) -> bool:
    """Marked ``apiserver``/``node``, or using a cluster fixture (even if unmarked)."""
    if any(item.get_closest_marker(m) for m in _CLUSTER_MARKERS):
        return True
    names = getattr(item, "fixturenames", ())
    return "apiserver_cluster" in names or "node_cluster" in names


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Remember that a test failed, so the session's teardown keeps the logs."""
    del call
    report = yield
    if report.failed:
        item.config.stash[_failed] = True
    return report


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Say where the kept component logs are."""
    for path in config.stash.get(_kept_logs, []):
        terminalreporter.write_line(f"podckpt cluster: component logs kept in {path}")


class _Session:
    """The one cluster of this pytest session."""

    cluster: Cluster | None = None


def _cluster(request: pytest.FixtureRequest, tier: str) -> Cluster:
    config = request.config
    if os.geteuid() != 0:
        _unavailable("the local Kubernetes cluster needs root")
    if _build_error in config.stash:
        err = config.stash[_build_error]
        if isinstance(err, PrerequisiteError):
            _unavailable(str(err))
        pytest.fail(f"building Kubernetes failed: {err}", pytrace=False)
    try:
        check_prerequisites(tier)
    except PrerequisiteError as e:
        _unavailable(str(e))
    if _Session.cluster is None:
        state = Path(tempfile.mkdtemp(prefix="podckpt-cluster-"))
        _Session.cluster = Cluster(state, name=state.name)
    c = _Session.cluster
    try:
        if tier == TIER_NODE:
            c.up_node()
        else:
            c.up_apiserver()
    except PrerequisiteError as e:
        _unavailable(str(e))
    except ClusterError as e:
        config.stash[_failed] = True
        pytest.fail(f"{tier} tier did not start: {e}\n(logs: {c.logs_dir})", pytrace=False)
    return c


@pytest.fixture(scope="session")
def apiserver_cluster(request: pytest.FixtureRequest) -> Generator[Cluster]:
    """etcd + kube-apiserver + kube-controller-manager (default StorageClass included)."""
    try:
        yield _cluster(request, TIER_APISERVER)
    finally:
        c = _Session.cluster
        _Session.cluster = None
        if c is not None:
            keep = request.config.stash.get(_failed, False)
            c.down(keep_logs=keep)
            if keep and c.logs_dir.exists():
                request.config.stash.setdefault(_kept_logs, []).append(str(c.logs_dir))


@pytest.fixture(scope="session")
def node_cluster(apiserver_cluster: Cluster, request: pytest.FixtureRequest) -> Cluster:
    """The whole single-node cluster (scheduler, containerd, kubelet, local registry), started
    on the session's apiserver tier; torn down with it."""
    del apiserver_cluster
    return _cluster(request, TIER_NODE)
