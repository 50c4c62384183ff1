"""pytest fixtures for the cluster tiers: ``apiserver_cluster``, ``node_cluster`` and
``multinode_cluster`` (with ``nodes``, per test).

All are session-scoped and share one control plane: the node tier is started on top of the
apiserver tier the session already runs, and the second node is added to the node tier the
session already runs (only the node: ~10 s). All return a `Cluster` (kubeconfig, env,
api_client(), kubectl(), logs_dir, token_kubeconfig(); for the node tier also load_image(),
registry, push_image(); with several nodes node_names, node_of(), stop_node(), kill_node(),
start_node()).

Tests marked ``multinode`` run after all others: once the second node is there, pods may be
scheduled on either node, and the tests before them were written for one.

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
from podckpt.devtools.cluster.state import NODE_UP

_CLUSTER_MARKERS = ("apiserver", "node", "multinode")
MULTINODE_NODES = 2
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
    """Run the multinode tests last; build the Kubernetes binaries before any test runs if a
    cluster test is selected."""
    del session
    items.sort(key=_is_multinode)  # stable: the order otherwise stays
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
    """Marked ``apiserver``/``node``/``multinode``, or using a cluster fixture (even if
    unmarked)."""
    if any(item.get_closest_marker(m) for m in _CLUSTER_MARKERS):
        return True
    names = getattr(item, "fixturenames", ())
    return bool({"apiserver_cluster", "node_cluster", "multinode_cluster"} & set(names))


def _is_multinode(item: pytest.Item) -> bool:
    names = getattr(item, "fixturenames", ())
    return item.get_closest_marker("multinode") is not None or "multinode_cluster" in names


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


@pytest.fixture(scope="session")
def multinode_cluster(node_cluster: Cluster, request: pytest.FixtureRequest) -> Cluster:
    """The node cluster grown to two nodes (``podckpt-node`` and ``podckpt-node-2``), each its
    own kubelet, containerd, bridge and node IP, on the session's control plane; images loaded
    before are imported into the new node. Torn down with the session. Use ``nodes`` in each
    test, so a node a test stopped or killed is back for the next one."""
    try:
        node_cluster.add_nodes(MULTINODE_NODES)
    except ClusterError as e:
        request.config.stash[_failed] = True
        pytest.fail(f"the second node did not start: {e}\n(logs: {node_cluster.logs_dir})")
    return node_cluster


@pytest.fixture
def nodes(multinode_cluster: Cluster) -> Generator[Cluster]:
    """The two-node cluster, every node up, Ready and schedulable when the test starts and
    again after it (nodes stopped or killed by the test are started; cordons are lifted)."""
    _restore_nodes(multinode_cluster)
    yield multinode_cluster
    _restore_nodes(multinode_cluster)


def _restore_nodes(c: Cluster) -> None:
    c.reload()  # a test may have used the CLI (another process) on the cluster
    for n in c.state.nodes:
        if n.status != NODE_UP:
            c.start_node(n.name)
    for name in c.node_names:
        c.kubectl("uncordon", name)
