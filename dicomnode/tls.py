"""DICOM TLS (PS3.15 Annex B.1): the SSL contexts of the listener and of the deliveries,
built once from the configuration with Python's ``ssl``.

Both sides: TLS 1.2 or newer with OpenSSL's default cipher suites; DCMTK's default
profile (non-downgrading BCP 195) and Orthanc's DICOM TLS connect to them
(tests/test_tls.py). The TLS listener (``[node] tls_port``) presents ``tls_cert_file``;
with ``tls_ca_file`` it checks client certificates, and with ``tls_require_client_cert``
(or a ``tls_client_subjects`` map) it requires one: a peer without a certificate signed
by that CA is refused in the handshake, before any DICOM is read. The map ties a
certificate's subject to the calling AE titles it may claim. A destination with ``tls =
true`` is checked against its ``tls_ca_file`` (else the system's CAs) and its host name,
and can present our own certificate. Nothing here logs key material or passwords.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from .config import Destination, NodeSection


def _problem(what: str, path: Path | None, e: Exception) -> ValueError:
    detail = getattr(e, "strerror", None) or getattr(e, "reason", None) or str(e)
    return ValueError(f"{what} {path}: {detail}")


def server_context(node: NodeSection) -> ssl.SSLContext | None:
    """The listener's context, or None when TLS is off. Raises ValueError naming the file."""
    if node.tls_cert_file is None or node.tls_key_file is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(node.tls_cert_file), str(node.tls_key_file))
    except (OSError, ssl.SSLError) as e:
        raise _problem("[node] tls_cert_file/tls_key_file cannot be loaded:", node.tls_cert_file, e) from e
    if node.tls_ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=str(node.tls_ca_file))
        except (OSError, ssl.SSLError) as e:
            raise _problem("[node] tls_ca_file cannot be loaded:", node.tls_ca_file, e) from e
        required = node.tls_require_client_cert or bool(node.tls_client_subjects)
        ctx.verify_mode = ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL
    return ctx


def peer_subject(sock: object) -> str | None:
    """The common name of a TLS peer's verified certificate; None for plain TCP or none."""
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is None:
        return None
    cert = getpeercert() or {}
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def subject_problem(node: NodeSection, sock: object, calling_ae: str) -> str | None:
    """Why a TLS association's certificate may not use ``calling_ae`` (``tls_client_subjects``),
    or None when it may (or no mapping is configured, or the connection is plain)."""
    if not node.tls_client_subjects or getattr(sock, "getpeercert", None) is None:
        return None
    subject = peer_subject(sock)
    allowed = dict(node.tls_client_subjects).get(subject or "")
    if allowed is None:
        return f"client certificate {subject!r} is not in tls_client_subjects"
    if calling_ae not in {a.strip() for a in allowed}:
        return f"client certificate {subject!r} may not call as {calling_ae!r}"
    return None


def client_context(dest: Destination) -> ssl.SSLContext | None:
    """The context for delivering to ``dest``, or None when it is plain DICOM."""
    if not dest.tls:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if dest.tls_ca_file is not None:
            ctx.load_verify_locations(cafile=str(dest.tls_ca_file))
        if dest.tls_cert_file is not None and dest.tls_key_file is not None:
            ctx.load_cert_chain(str(dest.tls_cert_file), str(dest.tls_key_file))
    except (OSError, ssl.SSLError) as e:
        raise _problem(
            f"destination {dest.label}: TLS files cannot be loaded:", dest.tls_ca_file or dest.tls_cert_file, e
        ) from e
    return ctx


def tls_problems(node: NodeSection, destinations: tuple[Destination, ...]) -> list[str]:
    """Every TLS file that cannot be loaded, in words (``dicomnode config check``)."""
    problems = []
    try:
        server_context(node)
    except ValueError as e:
        problems.append(str(e))
    for dest in destinations:
        try:
            client_context(dest)
        except ValueError as e:
            problems.append(str(e))
    return problems
