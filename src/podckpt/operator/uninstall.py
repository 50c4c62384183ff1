"""`python -m podckpt.operator.uninstall`: remove the webhook configuration first.

The Helm chart runs this as a pre-delete hook. Helm deletes a release's objects kind by kind,
Services and Deployments first and a MutatingWebhookConfiguration last; in between, the
fail-closed opt-in webhook points at a Service without pods and every opted-in pod of the
cluster is refused, and an uninstall that fails half-way would leave it so. Deleting the
configuration before anything else makes uninstalling safe: pods are then admitted unchanged
(they run without checkpoints, as without podckpt).

Runs in the operator image with the hook's service account (in-cluster credentials only).
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import urllib.error
import urllib.request

SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


def delete_webhook_configuration(name: str) -> str:
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    with open(f"{SERVICE_ACCOUNT}/token", encoding="ascii") as file:
        token = file.read().strip()
    context = ssl.create_default_context(cafile=f"{SERVICE_ACCOUNT}/ca.crt")
    url = (
        f"https://{host}:{port}/apis/admissionregistration.k8s.io/v1/"
        f"mutatingwebhookconfigurations/{name}"
    )
    request = urllib.request.Request(
        url, method="DELETE", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:  # noqa: S310
            json.load(response)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return f"mutatingwebhookconfiguration {name}: already gone"
        raise
    return f"mutatingwebhookconfiguration {name}: deleted"


def main() -> int:
    name = os.environ.get("PODCKPT_WEBHOOK_CONFIGURATION", "podckpt")
    try:
        print(delete_webhook_configuration(name))
    except (OSError, KeyError, urllib.error.URLError) as exc:
        print(f"podckpt uninstall: cannot delete {name}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
