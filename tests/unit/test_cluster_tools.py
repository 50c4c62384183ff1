"""Unit tests of the local-cluster tooling that need no root and no running cluster."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from podckpt.devtools.cluster import binaries, components, fixtures, images, pki
from podckpt.devtools.cluster.errors import ClusterError, PrerequisiteError
from podckpt.devtools.cluster.state import State, Timeouts, node_name

RELEASE_GOMOD = """module k8s.io/kubernetes

go 1.26.0

godebug default=go1.26

require (
\tk8s.io/api v0.0.0
\tk8s.io/utils v0.0.0-20260626114624-be93311217bd
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/cri-client => ./staging/src/k8s.io/cri-client
)
"""


def test_wrapper_module_replaces_each_staging_module_with_its_release() -> None:
    assert binaries.staging_modules(RELEASE_GOMOD) == ["k8s.io/api", "k8s.io/cri-client"]
    gomod = binaries.wrapper_gomod("v1.37.2", RELEASE_GOMOD)
    assert "require k8s.io/kubernetes v1.37.2" in gomod
    assert "\tk8s.io/api => k8s.io/api v0.37.2" in gomod
    assert "\tk8s.io/cri-client => k8s.io/cri-client v0.37.2" in gomod
    assert "go 1.26.0" in gomod
    assert "godebug default=go1.26" in gomod
    assert "k8s.io/utils" not in gomod  # not a staging module: resolved normally


def test_cache_is_keyed_by_version(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PODCKPT_CACHE", str(tmp_path))
    assert binaries.binaries_dir("v1.36.3") == tmp_path / "kubernetes" / "v1.36.3"
    assert binaries.cached("v1.36.3") is None


def test_missing_go_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(binaries.os, "access", lambda *_: False)
    with pytest.raises(PrerequisiteError, match=r"Go is missing.*install Go"):
        binaries.find_go()


def test_port_in_use_is_one_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(PrerequisiteError, match=rf"port {port} .* in use.*MY_PORT"):
            components.require_free_port(port, "kube-apiserver", "MY_PORT")


def test_free_ports_are_below_the_ephemeral_range_and_never_handed_out_twice() -> None:
    """A port from the ephemeral range can be taken by an outgoing connection while a
    component restarts on it (EADDRINUSE in the operator fault suite)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [components.free_port() for _ in range(20)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= p < low for p in ports), ports
    with socket.socket() as sock:  # each is bindable now
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", ports[0]))


def test_certificates_chain_to_the_ca_and_carry_identities(tmp_path: Path) -> None:
    ca = pki.CertificateAuthority(tmp_path)
    client = ca.issue("admin", "kubernetes-admin", orgs=("system:masters",), client=True)
    server = pki.serving_cert(ca, "hook", ("127.0.0.1", "localhost"))
    cert = x509.load_pem_x509_certificate(client.cert.read_bytes())
    assert cert.subject.rfc4514_string() == "CN=kubernetes-admin,O=system:masters"
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_path.read_bytes()))
    # A TLS client that trusts only our CA accepts the serving cert for 127.0.0.1.
    ctx = ssl.create_default_context(cafile=str(ca.cert_path))
    srv_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    srv_ctx.load_cert_chain(str(server.cert), str(server.key))
    with socket.socket() as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen()
        server_side = threading.Thread(
            target=lambda: srv_ctx.wrap_socket(ls.accept()[0], server_side=True).close(),
            daemon=True,
        )
        server_side.start()
        with (
            socket.create_connection(ls.getsockname(), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            assert tls.version() is not None
        server_side.join(10)
    # Reissuing reuses the files (kubeconfigs a human copied stay valid across `up`s).
    assert ca.issue("admin", "other").cert.read_bytes() == client.cert.read_bytes()


def test_kubeconfig_with_token(tmp_path: Path) -> None:
    path = pki.write_kubeconfig(
        tmp_path / "k", "https://127.0.0.1:6443", tmp_path / "ca.crt", user="u", token="t"
    )
    doc = yaml.safe_load(path.read_text())
    assert doc["users"][0]["user"] == {"token": "t"}
    assert doc["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    assert path.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("podckpt.local/pause:3.10", ("podckpt.local/pause", "3.10")),
        ("busybox", ("busybox", "latest")),
        ("127.0.0.1:5000/x/y:1", ("127.0.0.1:5000/x/y", "1")),
        ("127.0.0.1:5000/x", ("127.0.0.1:5000/x", "latest")),
    ],
)
def test_split_ref(ref: str, expected: tuple[str, str]) -> None:
    assert images.split_ref(ref) == expected


def test_cli_down_with_nothing_running_is_harmless(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "podckpt.devtools.cluster", "down"],
        env={"PODCKPT_CLUSTER_DIR": str(tmp_path / "none"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "cluster: nothing to stop"


def test_cli_status_of_nothing(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "podckpt.devtools.cluster", "status"],
        env={"PODCKPT_CLUSTER_DIR": str(tmp_path / "none"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 3
    assert proc.stderr.strip() == "cluster: not running"


def test_missing_prerequisite_skips_but_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no etcd"):
        fixtures._unavailable("no etcd")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="under CI=true: no etcd"):
        fixtures._unavailable("no etcd")


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("podckpt.local/busybox:smoke", "127.0.0.1:5000/busybox:smoke"),
        ("busybox", "127.0.0.1:5000/busybox:latest"),
        ("library/busybox:1", "127.0.0.1:5000/library/busybox:1"),
        ("localhost:5001/a/b:2", "127.0.0.1:5000/a/b:2"),
    ],
)
def test_registry_ref(ref: str, expected: str) -> None:
    assert images.registry_ref("127.0.0.1:5000", ref) == expected


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("myapp:1", "docker.io/library/myapp:1"),
        ("me/app", "docker.io/me/app:latest"),
        ("podckpt.local/pause:3.10", "podckpt.local/pause:3.10"),
        ("localhost:5000/a:2", "localhost:5000/a:2"),
        ("quay.io/x/y:3", "quay.io/x/y:3"),
    ],
)
def test_normalize_ref_as_the_cri_names_images(ref: str, expected: str) -> None:
    assert images.normalize_ref(ref) == expected


def test_image_archive_kind_is_told_from_its_contents(tmp_path: Path) -> None:
    def archive(name: str, member: str) -> Path:
        src = tmp_path / name
        src.mkdir()
        (src / member).write_text("{}")
        out = tmp_path / f"{name}.tar"
        with tarfile.open(out, "w") as tar:
            tar.add(src / member, arcname=member)
        return out

    assert images._archive_transport(archive("oci", "oci-layout")) == "oci-archive"
    assert images._archive_transport(archive("docker", "manifest.json")) == "docker-archive"
    with pytest.raises(ClusterError, match="neither an OCI layout"):
        images._archive_transport(archive("other", "readme"))


def test_state_file_of_another_version_loads(tmp_path: Path) -> None:
    """Unknown keys (another version of this code wrote the file) are ignored, nodes and
    timeouts come back as objects."""
    old = {
        "name": "c",
        "version": "v1",
        "bridge": "pck-0",  # a key of the one-node format
        "nodes": [
            {
                "name": "podckpt-node",
                "index": 1,
                "dir": "/x",
                "ip": "10.244.1.1",
                "bridge": "pck-1",
                "network": "n",
                "pod_subnet": "10.244.1.0/24",
                "cgroup_root": "/podckpt-pck-1",
            },
        ],
        "timeouts": {"toleration_s": 5},
    }
    st = State.from_json(old)
    assert st.nodes[0].name == "podckpt-node"
    assert st.nodes[0].status == "up"
    assert st.nodes[0].process_name("kubelet") == "kubelet"
    assert st.timeouts.toleration_s == 5
    assert st.timeouts.node_monitor_grace_s == Timeouts().node_monitor_grace_s
    assert node_name(2) == "podckpt-node-2"
