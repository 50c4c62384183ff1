"""argv resolution from a real registry, for every command/args x ENTRYPOINT/CMD case."""

from __future__ import annotations

from typing import Any

import pytest
from kubehelpers import Kube, Registry

pytestmark = pytest.mark.apiserver

ON = {"memverge.ai/checkpoint-mode": "true"}
VOLUME = {"memverge.ai/checkpoint-storage-volume": "ckpt"}


def _pod(name: str, container: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": ON, "annotations": VOLUME},
        "spec": {
            "containers": [{"name": "app", **container}],
            "volumes": [{"name": "ckpt", "emptyDir": {}}],
        },
    }


@pytest.fixture(scope="module")
def images(registry: Registry) -> dict[str, str]:
    return {
        "both": registry.push("both", entrypoint=["/entry", "$HOME"], cmd=["serve", "--x"]),
        "entry": registry.push("entry", entrypoint=["/entry"], cmd=None),
        "cmd": registry.push("cmd", entrypoint=None, cmd=["/bin/app", "run"]),
        "none": registry.push("none", entrypoint=None, cmd=None),
    }


# (image, command, args) -> wrapped args (the original argv as the agent receives it)
CASES = [
    ("both", None, None, ["/entry", "$$HOME", "serve", "--x"]),
    ("both", None, ["only", "$(POD)"], ["/entry", "$$HOME", "only", "$(POD)"]),
    ("both", ["/mine"], None, ["/mine"]),
    ("both", ["/mine"], ["a"], ["/mine", "a"]),
    ("entry", None, None, ["/entry"]),
    ("entry", None, ["a"], ["/entry", "a"]),
    ("cmd", None, None, ["/bin/app", "run"]),
    ("cmd", None, ["/other"], ["/other"]),
    ("none", ["/mine"], ["a"], ["/mine", "a"]),
]


@pytest.mark.parametrize(
    ("image", "command", "args", "expected"),
    CASES,
    ids=[f"{c[0]}-cmd{c[1] is not None:d}-args{c[2] is not None:d}" for c in CASES],
)
def test_argv(
    kube: Kube,
    namespace: str,
    images: dict[str, str],
    image: str,
    command: list[str] | None,
    args: list[str] | None,
    expected: list[str],
) -> None:
    container: dict[str, Any] = {"image": images[image]}
    if command is not None:
        container["command"] = command
    if args is not None:
        container["args"] = args
    created = kube.create_pod(namespace, _pod("p", container))
    app = created["spec"]["containers"][0]
    assert app["command"][0] == "/.podckpt/bin/podckpt-agent"
    assert app["command"][-1] == "--"
    assert app["args"] == expected


def test_image_without_entrypoint_or_cmd_is_denied(
    kube: Kube, namespace: str, images: dict[str, str]
) -> None:
    message = kube.denial(namespace, _pod("p", {"image": images["none"]}))
    assert "neither the pod spec (command/args) nor the image (ENTRYPOINT/CMD)" in message


def test_unknown_image_is_denied_with_the_reason(
    kube: Kube, namespace: str, registry: Registry
) -> None:
    message = kube.denial(namespace, _pod("p", {"image": f"{registry.host}/missing:v1"}))
    assert "cannot wrap container 'app'" in message
    assert "not found" in message
    assert "Set `command`" in message


def test_unreachable_registry_is_denied(kube: Kube, namespace: str) -> None:
    message = kube.denial(namespace, _pod("p", {"image": "127.0.0.1:9/app:v1"}))
    assert "registry unreachable" in message


def test_an_unreadable_pull_secret_is_not_needed_for_a_public_image(
    kube: Kube, namespace: str, images: dict[str, str]
) -> None:
    """Pods often carry pull Secrets copied from their ServiceAccount (a mirror's or a cloud
    registry's) for images that need none. Without a grant podckpt may not read them; the
    image's argv comes from the registry anonymously, and the pod is admitted as without
    podckpt (it is denied only when the registry asks for credentials: test_attacks)."""
    secret = {
        "metadata": {"name": "mirror"},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": "eyJhdXRocyI6IHt9fQ=="},  # {"auths": {}}
    }
    kube.core.create_namespaced_secret(namespace, secret)
    pod = _pod("with-secret", {"image": images["entry"]})
    pod["spec"]["imagePullSecrets"] = [{"name": "mirror"}]
    created = kube.create_pod(namespace, pod)
    assert created["spec"]["containers"][0]["args"] == ["/entry"]
