"""DICOM TLS (PS3.15 Annex B.1, the BCP 195 profile): the SSL contexts of the listener and
of the deliveries, built once from the configuration with Python's ``ssl``.

Both sides: TLS 1.2 or newer, the default (strong) cipher suites of OpenSSL. The
listener presents ``[node] tls_cert_file`` and, with ``tls_ca_file``, requires and checks
a client certificate (a scanner or PACS that cannot show one signed by that CA is
refused during the handshake, before any DICOM is read). A destination with ``tls =
true`` is checked against ``tls_ca_file`` (else the system's CAs) and its host name, and
can present our own certificate. Nothing here logs key material or passwords.
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
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


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
        raise _problem(f"destination {dest.label}: TLS files cannot be loaded:",
                       dest.tls_ca_file or dest.tls_cert_file, e) from e
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
