"""The webhook's TLS certificate without cert-manager.

At start, each webhook replica takes the serving certificate from a Secret in its namespace,
or creates one (a private CA and a serving certificate for the Service's DNS names) if it is
missing, unreadable or expiring; replicas racing to create it converge on the first one
stored (create conflicts are re-read). Then it writes the CA into the `caBundle` of every
webhook of the MutatingWebhookConfiguration, so the API server trusts it.

Generated with `cryptography` (kopf's own self-signed path needs oscrypto, which fails with
OpenSSL 3).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import ipaddress
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from podckpt.operator.kube.api import ApiError, KubeAPI, namespaced
from podckpt.operator.settings import OperatorSettings

logger = logging.getLogger(__name__)

VALIDITY = datetime.timedelta(days=3650)
RENEW_BEFORE = datetime.timedelta(days=30)


@dataclasses.dataclass(frozen=True)
class CertBundle:
    ca: bytes  # PEM
    cert: bytes  # PEM
    key: bytes  # PEM

    def write(self, directory: Path) -> tuple[Path, Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        paths = directory / "ca.crt", directory / "tls.crt", directory / "tls.key"
        for path, data in zip(paths, (self.ca, self.cert, self.key), strict=True):
            path.write_bytes(data)
        paths[2].chmod(0o600)
        return paths


def service_names(service: str, namespace: str) -> list[str]:
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def self_signed_ca(
    name: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    *,
    validity: datetime.timedelta,
    now: datetime.datetime,
    path_length: int | None = 0,
) -> x509.Certificate:
    """A CA certificate that may only sign certificates (and CRLs)."""
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )


def subject_alt_names(names: Iterable[str]) -> list[x509.GeneralName]:
    """IP addresses as IP SANs, everything else as DNS names."""
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    return sans


def generate(names: Iterable[str], *, now: datetime.datetime | None = None) -> CertBundle:
    """A fresh CA and a serving certificate for `names` (DNS names or IP addresses)."""
    now = now or datetime.datetime.now(datetime.UTC)
    names = list(names)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "podckpt-webhook-ca")])
    ca = self_signed_ca(ca_name, ca_key, validity=VALIDITY, now=now)
    key = ec.generate_private_key(ec.SECP256R1())
    sans = subject_alt_names(names)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return CertBundle(
        ca.public_bytes(serialization.Encoding.PEM),
        cert.public_bytes(serialization.Encoding.PEM),
        pem_key(key),
    )


def usable(
    bundle: CertBundle, names: Iterable[str], *, now: datetime.datetime | None = None
) -> bool:
    """Whether a stored bundle parses, covers `names` and is not about to expire."""
    now = now or datetime.datetime.now(datetime.UTC)
    try:
        cert = x509.load_pem_x509_certificate(bundle.cert)
        x509.load_pem_x509_certificate(bundle.ca)
        serialization.load_pem_private_key(bundle.key, password=None)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    covered = {str(n) for n in sans.get_values_for_type(x509.DNSName)}
    covered |= {str(n) for n in sans.get_values_for_type(x509.IPAddress)}
    return set(names) <= covered and cert.not_valid_after_utc - RENEW_BEFORE > now


def _secret(op: OperatorSettings, bundle: CertBundle) -> dict[str, Any]:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": op.webhook_secret, "namespace": op.operator_namespace},
        "data": {"ca.crt": b64(bundle.ca), "tls.crt": b64(bundle.cert), "tls.key": b64(bundle.key)},
    }


def _from_secret(secret: dict[str, Any]) -> CertBundle | None:
    data = secret.get("data") or {}
    try:
        return CertBundle(
            base64.b64decode(data["ca.crt"]),
            base64.b64decode(data["tls.crt"]),
            base64.b64decode(data["tls.key"]),
        )
    except (KeyError, ValueError):
        return None


async def ensure_certificate(api: KubeAPI, op: OperatorSettings) -> CertBundle:
    """The serving certificate from the Secret, creating or renewing it when needed."""
    names = [*service_names(op.webhook_service, op.operator_namespace), *op.webhook_extra_names]
    path = namespaced("secrets", op.operator_namespace, op.webhook_secret)
    for _attempt in range(3):
        try:
            stored = _from_secret(await api.get(path))
        except ApiError as exc:
            if not exc.not_found:
                raise
            bundle = generate(names)
            try:
                await api.post(namespaced("secrets", op.operator_namespace), _secret(op, bundle))
            except ApiError as create_error:
                if create_error.conflict:
                    continue  # another replica was first: use its certificate
                raise
            logger.info("created webhook certificate secret %s", op.webhook_secret)
            return bundle
        if stored is not None and usable(stored, names):
            return stored
        bundle = generate(names)
        await api.merge_patch(path, {"data": _secret(op, bundle)["data"]})
        logger.info("renewed webhook certificate secret %s", op.webhook_secret)
        # Re-read: a replica renewing at the same time may have won.
    raise RuntimeError("could not settle the webhook certificate secret")


async def inject_ca_bundle(api: KubeAPI, op: OperatorSettings, ca: bytes) -> None:
    """Write `ca` into every webhook of our MutatingWebhookConfiguration."""
    path = (
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/"
        + op.webhook_configuration
    )
    config = await api.get(path)
    encoded = base64.b64encode(ca).decode()
    webhooks = config.get("webhooks") or []
    if all(w.get("clientConfig", {}).get("caBundle") == encoded for w in webhooks):
        return
    for webhook in webhooks:
        webhook.setdefault("clientConfig", {})["caBundle"] = encoded
    # A merge patch replaces the list as a whole; resourceVersion makes it optimistic.
    await api.merge_patch(
        path,
        {
            "metadata": {"resourceVersion": config["metadata"]["resourceVersion"]},
            "webhooks": webhooks,
        },
    )
    logger.info("injected the CA into %d webhooks of %s", len(webhooks), op.webhook_configuration)
