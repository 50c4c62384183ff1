"""The operator installed from config/ on the real apiserver tier, running as its own service
accounts; a real `docker-registry` with tiny images for the argv tests."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubehelpers import Kube, Registry, eventually, port_open
from kubernetes import client

from podckpt.devtools import operator_install
from podckpt.devtools.operator_harness import Operator, free_port


@pytest.fixture(scope="session")
def kube(apiserver_cluster: Any) -> Iterator[Kube]:
    with apiserver_cluster.api_client() as api:
        yield Kube(api)


_HARNESS = pytest.StashKey[Operator]()


@pytest.fixture(scope="session")
def operator(apiserver_cluster: Any, request: pytest.FixtureRequest) -> Iterator[Operator]:
    """The operator as local processes, for this folder's tests; stopped after its last one
    (`pytest_runtest_teardown`): tests of other folders that run later on the session's
    control plane (the multinode end-to-end tests run last) must find the in-cluster
    operator, not this one's webhook configuration and controller."""
    # The end-to-end tests share this session's control plane and leave the operator
    # installed in-cluster: two controllers would double every Event.
    operator_install.uninstall(apiserver_cluster, wait=True)
    op = Operator(apiserver_cluster)
    request.config.stash[_HARNESS] = op
    op.install()
    op.start_webhook()
    op.start_controller()
    yield op
    _stop(request.config)


def _stop(config: pytest.Config) -> None:
    op = config.stash.get(_HARNESS, None)
    if op is not None:
        del config.stash[_HARNESS]
        op.uninstall()


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """After this folder's last test (the next one is elsewhere, or none), stop the harness.
    `trylast`: after pytest's own teardown, so module fixtures that use it are gone first."""
    here = Path(__file__).parent
    if nextitem is None or here not in nextitem.path.parents:
        _stop(item.config)


@pytest.fixture
def namespace(kube: Kube, operator: Operator) -> Iterator[str]:
    del operator
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.core.create_namespace({"metadata": {"name": name}})
    # The default ServiceAccount appears asynchronously (controller-manager); pods need it.
    eventually(
        lambda: any(
            sa.metadata.name == "default"
            for sa in kube.core.list_namespaced_service_account(name).items
        ),
        what="default service account",
    )
    yield name
    with contextlib.suppress(client.ApiException):
        kube.core.delete_namespace(name)


@pytest.fixture(scope="session")
def registry(
    tmp_path_factory: pytest.TempPathFactory, apiserver_cluster: Any
) -> Iterator[Registry]:
    del apiserver_cluster  # same prerequisites; and the webhook reaches it on 127.0.0.1
    for tool in ("docker-registry", "umoci", "skopeo"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing; run hack/setup.sh")
    work = tmp_path_factory.mktemp("registry")
    port = free_port()
    config = work / "config.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage:\n  filesystem:\n    rootdirectory: {work / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        "log:\n  level: warn\n"
    )
    with (work / "registry.log").open("wb") as log:
        proc = subprocess.Popen(
            ["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        eventually(lambda: port_open(port), timeout=20, what="docker-registry")
        yield Registry(f"127.0.0.1:{port}", work)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
