"""Our upper layer (fastscp) against pynetdicom as the peer and against raw bytes:
negotiation, max PDU, release, abort, malformed input."""

from __future__ import annotations

import socket
import struct

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, PatientRootQueryRetrieveInformationModelFind, Verification

from dicomnode.config import NodeSection
from dicomnode.scp import StorageSCP
from dicomnode.store import InstanceStore

from conftest import free_port


@pytest.fixture()
def server(tmp_path):
    node = NodeSection(ae_title="COVIDNODE", port=free_port(), bind_address="127.0.0.1", min_free_mb=0)
    stored: list[str] = []
    scp = StorageSCP(node, InstanceStore(tmp_path / "storage", 0), lambda info, rel: stored.append(info.sop_uid))
    scp.start()
    yield scp, stored
    scp.stop()


def test_pynetdicom_peer_echo_store_and_unaccepted_context(server):
    from dicomnode.synthetic import ct_datasets

    from node_helpers import small_volume

    scp, stored = server
    ae = AE(ae_title="SCANNER")
    ae.maximum_pdu_size = 16384  # the node must split nothing it sends beyond this
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="COVIDNODE")
    assert assoc.is_established
    accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
    assert PatientRootQueryRetrieveInformationModelFind not in accepted and CTImageStorage in accepted
    assert assoc.send_c_echo().Status == 0x0000
    ds = ct_datasets(small_volume(1, 64))[0]
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    assert stored == [ds.SOPInstanceUID]


def test_garbage_is_aborted(server):
    scp, _ = server
    with socket.create_connection(("127.0.0.1", scp.port), timeout=10) as s:
        s.sendall(struct.pack(">BBI", 0x09, 0, 4) + b"abcd")  # not a PDU type we know
        reply = s.recv(64)
        assert reply == b"" or reply[0] == 0x07  # A-ABORT (or the connection closed)


def test_unknown_called_ae_gets_a_reject(server):
    scp, _ = server
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="WRONG")
    assert assoc.is_rejected


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"])
def test_lossy_jpeg_transfer_syntaxes_are_accepted(server, syntax):
    """Issue 9, defect 15: JPEG baseline (8-bit) and extended (12-bit) are not refused at association."""
    scp, _ = server
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(CTImageStorage, [syntax])
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="COVIDNODE")
    try:
        assert assoc.is_established
        assert [str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts] == [syntax]
    finally:
        assoc.release()
