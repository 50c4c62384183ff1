"""Who is who in the local cluster: certificates and kubeconfigs of every component and user.

`pki` makes certificates; this module decides which ones the cluster needs. Identities are what
Kubernetes' x509 authenticator reads (CN = user, O = groups):

- the admin and the controller-manager in ``system:masters``; the controller-manager runs all
  controllers under its own identity (``--use-service-account-credentials=false``, see
  `controlplane`), which needs it;
- the scheduler as ``system:kube-scheduler``; each node's kubelet as ``system:node:<name>`` in
  ``system:nodes`` (the Node authorizer and NodeRestriction confine it to its own node);
- the apiserver's client certificate for kubelets (``kube-apiserver``, bound to
  ``system:kubelet-api-admin`` for `kubectl logs/exec`);
- service-account tokens for tests that must act with the operator's RBAC, not as admin.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from kubernetes import client

from podckpt.devtools.cluster import pki
from podckpt.devtools.cluster.errors import ClusterError
from podckpt.devtools.cluster.state import SERVICE_IP, ClusterBase, NodeState


def write_control_plane(c: ClusterBase) -> None:
    """CA, apiserver serving and kubelet-client certificates, service-account keys, and the
    kubeconfigs of the admin, controller-manager and scheduler."""
    ca = pki.CertificateAuthority(c.pki_dir)
    ca.issue(
        "apiserver",
        "kube-apiserver",
        dns=(
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
        ips=("127.0.0.1", SERVICE_IP),
        server=True,
    )
    ca.issue("apiserver-kubelet-client", "kube-apiserver", client=True)
    pki.service_account_keys(c.pki_dir)
    users = {
        "admin": ("kubernetes-admin", ("system:masters",)),
        # system:masters: see --use-service-account-credentials=false in controlplane.
        "controller-manager": ("system:kube-controller-manager", ("system:masters",)),
        "scheduler": ("system:kube-scheduler", ()),
    }
    for base, (cn, orgs) in users.items():
        pair = ca.issue(base, cn, orgs=orgs, client=True)
        pki.write_kubeconfig(
            c.state_dir / f"{base}.kubeconfig", c.server, ca.cert_path, user=cn, client=pair
        )


def write_node(c: ClusterBase, node: NodeState) -> tuple[Path, pki.CertPair]:
    """The node's kubeconfig (``system:node:<name>``) and the kubelet's serving certificate
    (its node IP and 127.0.0.1): (kubeconfig, serving pair)."""
    ca = pki.CertificateAuthority(c.pki_dir)
    cn = f"system:node:{node.name}"
    pair = ca.issue(f"kubelet-{node.name}", cn, orgs=("system:nodes",), client=True)
    kubeconfig = pki.write_kubeconfig(
        node.path / "kubelet.kubeconfig", c.server, ca.cert_path, user=cn, client=pair
    )
    serving = ca.issue(
        f"kubelet-serving-{node.name}",
        node.name,
        dns=(node.name, "localhost"),
        ips=(node.ip, "127.0.0.1"),
        server=True,
    )
    return kubeconfig, serving


def serving_cert(c: ClusterBase, basename: str, hosts: tuple[str, ...]) -> pki.CertPair:
    """A serving certificate from the cluster CA, e.g. for a webhook on 127.0.0.1."""
    return pki.serving_cert(pki.CertificateAuthority(c.pki_dir), basename, hosts)


def token_kubeconfig(
    c: ClusterBase, namespace: str, serviceaccount: str, *, expiration_seconds: int = 86400
) -> Path:
    """A kubeconfig that acts as ``namespace/serviceaccount`` (both created if missing)."""
    with c.api_client() as api:
        core = client.CoreV1Api(api)
        with contextlib.suppress(client.ApiException):
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
        with contextlib.suppress(client.ApiException):
            core.create_namespaced_service_account(
                namespace,
                client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=serviceaccount)),
            )
        tr = core.create_namespaced_service_account_token(
            serviceaccount,
            namespace,
            client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=expiration_seconds)
            ),
        )
    if tr.status is None:
        raise ClusterError(f"no token issued for {namespace}/{serviceaccount}")
    d = c.state_dir / "users"
    d.mkdir(exist_ok=True)
    return pki.write_kubeconfig(
        d / f"{namespace}.{serviceaccount}.kubeconfig",
        c.server,
        c.ca_path,
        user=f"system:serviceaccount:{namespace}:{serviceaccount}",
        token=tr.status.token,
        namespace=namespace,
    )
