"""End-to-end fixtures: the operator installed in-cluster from its manifests, a counter image,
and a namespace per test whose state (events, pod descriptions, agent and operator logs) is
written to the cluster's log directory when the test fails."""

from __future__ import annotations

import re
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from podckpt.devtools import operator_install
from podckpt.devtools.bundlecheck.roots import busybox_root
from podckpt.devtools.cluster.cluster import Cluster

APP_IMAGE = "podckpt.local/e2e-counter:1"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        item.stash.setdefault(FAILED, set()).add(report.when)
    return report


FAILED = pytest.StashKey[set[str]]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that uninstall or reinstall the operator run after the other end-to-end tests
    (and before the tests of other folders, which may take the cluster over)."""
    here = Path(__file__).parent
    last = [i for i in items if i.get_closest_marker("lifecycle") and here in i.path.parents]
    if not last:
        return
    rest = [i for i in items if i not in last]
    end = max((n for n, i in enumerate(rest) if here in i.path.parents), default=len(rest) - 1)
    items[:] = [*rest[: end + 1], *last, *rest[end + 1 :]]


@pytest.fixture(scope="session")
def _operator_work(
    node_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """Where the operator's images are built; the in-cluster operator is removed at the end."""
    yield tmp_path_factory.mktemp("operator-images")
    operator_install.uninstall(node_cluster)


@pytest.fixture
def operator(node_cluster: Cluster, _operator_work: Path) -> Cluster:
    """The node cluster with podckpt installed in it (webhook and controller Deployments),
    from the chart. Installed again when a test before this one removed it (the lifecycle
    tests uninstall it; the apiserver tier's tests replace it with their harness), so that the
    multinode tests, which run last, find it. Its pods stay on the first node: the node-loss
    tests kill the second one."""
    if not operator_install.helm_installed(node_cluster):
        first = {"nodeSelector": {"kubernetes.io/hostname": node_cluster.node_names[0]}}
        try:
            operator_install.install(
                node_cluster, work=_operator_work, webhook=first, controller=first
            )
        except BaseException:
            _write(node_cluster.logs_dir / "e2e" / "install", node_cluster, None)
            raise
    return node_cluster


@pytest.fixture(scope="session")
def app_image(node_cluster: Cluster) -> str:
    """busybox (static, a shell, no libc): the counter is a shell loop printing to stdout."""
    return node_cluster.load_image(busybox_root(), APP_IMAGE, push=False)


def _write(dest: Path, cluster: Cluster, namespace: str | None) -> None:
    dest.mkdir(parents=True, exist_ok=True)

    def k(*args: str) -> str:
        out = cluster.kubectl(*args, check=False, timeout=60)
        return out.stdout + out.stderr

    (dest / "operator.log").write_text(operator_install.logs(cluster))
    (dest / "operator-pods.txt").write_text(k("describe", "pods", "-n", operator_install.NAMESPACE))
    if namespace is None:
        return
    (dest / "events.txt").write_text(k("get", "events", "-n", namespace, "-o", "wide"))
    (dest / "pods.txt").write_text(k("describe", "pods", "-n", namespace))
    (dest / "pvc.txt").write_text(k("get", "pvc,pv", "-n", namespace, "-o", "wide"))
    # which node each pod was on, and what became of the nodes (the disruption tests)
    (dest / "nodes.txt").write_text(
        k("get", "pods", "-n", namespace, "-o", "wide") + k("describe", "nodes")
    )
    names = k("get", "pods", "-n", namespace, "-o", "name").split()
    agent = []
    for name in names:
        for previous in ("false", "true"):
            agent.append(f"===== {name} (previous={previous})")
            agent.append(
                k("logs", "-n", namespace, name, "--all-containers", f"--previous={previous}")
            )
    (dest / "agent.log").write_text("\n".join(agent))


@pytest.fixture
def namespace(operator: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace; on failure its state goes to <cluster logs>/e2e/<test>/."""
    name = operator.create_namespace(f"e2e-{uuid.uuid4().hex[:6]}")
    yield name
    if request.node.stash.get(FAILED, set()):
        dest = operator.logs_dir / "e2e" / re.sub(r"[^\w.-]", "_", request.node.name)
        _write(dest, operator, name)
        print(f"e2e: state of the failed test kept in {dest}")
    operator.kubectl("delete", "namespace", name, "--wait=false", check=False)
