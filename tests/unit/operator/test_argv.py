"""Kubernetes argv rules: command/args against ENTRYPOINT/CMD, and $(VAR) escaping."""

from __future__ import annotations

import pytest

from podckpt.operator.webhook.argv import EmptyArgvError, ImageArgv, needs_image, original_argv

IMAGE = ImageArgv(entrypoint=("/entry", "--flag"), cmd=("serve", "$HOME"))


@pytest.mark.parametrize(
    ("container", "expected"),
    [
        ({"command": ["/bin/x"], "args": ["a"]}, ["/bin/x", "a"]),
        ({"command": ["/bin/x"]}, ["/bin/x"]),
        ({"args": ["a", "$(POD)"]}, ["/entry", "--flag", "a", "$(POD)"]),
        ({}, ["/entry", "--flag", "serve", "$$HOME"]),
        ({"command": [], "args": []}, ["/entry", "--flag", "serve", "$$HOME"]),
    ],
    ids=["command+args", "command-only", "args-only", "neither", "empty-lists"],
)
def test_argv_rules(container: dict[str, list[str]], expected: list[str]) -> None:
    container = {"name": "c", **container}
    image = IMAGE if needs_image(container) else None
    assert original_argv(container, image) == expected


def test_command_makes_the_image_unneeded() -> None:
    assert not needs_image({"name": "c", "command": ["/x"]})
    assert needs_image({"name": "c", "args": ["a"]})


def test_image_argv_is_escaped_against_kubelet_expansion() -> None:
    image = ImageArgv(entrypoint=("sh", "-c", "echo $(date) $$"), cmd=())
    assert original_argv({"name": "c"}, image)[2] == "echo $$(date) $$$$"


def test_nothing_to_run_is_an_error() -> None:
    with pytest.raises(EmptyArgvError, match="ENTRYPOINT/CMD"):
        original_argv({"name": "c"}, ImageArgv((), ()))
