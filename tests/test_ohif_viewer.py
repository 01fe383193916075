"""OHIF Viewer v3 shows what the node sends back (issue 5, the viewer part).

The proxy tests run everywhere (standard library only). The viewer test needs the real
peers: Orthanc with its DICOMweb plugin, Debian's chromium, node, and what
tests/ohif/setup.sh fetches (OHIF 3.13.2's static build, playwright-core).
"""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from ohif.harness import run_driver, upload, viewer_missing_reason

from dicomweb_proxy import serving, split_includefield
from orthanc import orthanc_missing_reason, running_orthanc

# --- the proxy, against a stand-in upstream -------------------------------------------


def test_split_includefield_makes_repeated_parameters():
    assert split_includefield("includefield=00081030,00080060&limit=5") == (
        "includefield=00081030&includefield=00080060&limit=5"
    )
    # Percent-encoded commas (what browsers may send) are split too; other
    # parameters keep their encoding and order.
    assert split_includefield("limit=1&includefield=0020000D%2C00080020&PatientName=A%2CB") == (
        "limit=1&includefield=0020000D&includefield=00080020&PatientName=A%2CB"
    )
    assert split_includefield("includefield=all") == "includefield=all"
    assert split_includefield("") == ""


class _Upstream(BaseHTTPRequestHandler):
    """Stands in for Orthanc: records what it was asked, answers chunked DICOM JSON."""

    seen: list[tuple[str, str, str]] = []

    def do_GET(self):  # noqa: N802
        self.seen.append((self.command, self.path, self.headers.get("Host", "")))
        body = b'[{"00080060": {"vr": "CS", "Value": ["CT"]}}]'
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        if "chunked" in self.path:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            half = len(body) // 2
            for part in (body[:half], body[half:]):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass


@pytest.fixture()
def upstream():
    _Upstream.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web/"
    server.shutdown()
    server.server_close()


@pytest.fixture()
def fake_dist(tmp_path) -> tuple[Path, Path]:
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.html").write_text("<html>OHIF index</html>")
    (dist / "app.bundle.js").write_text("console.log('bundle')")
    (dist / "app-config.js").write_text("window.config = 'from the build';")
    (dist / "x.wasm").write_bytes(b"\0asm")
    (tmp_path / "secret.txt").write_text("outside dist")
    config = tmp_path / "app-config.js"
    config.write_text("window.config = 'ours';")
    return dist, config


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def test_proxy_serves_ohif_with_spa_fallback_and_our_config(fake_dist, upstream):
    dist, config = fake_dist
    with serving(upstream, dist_dir=dist, app_config=config) as base:
        assert _get(base + "/")[2] == b"<html>OHIF index</html>"
        # OHIF's client-side routes are not files: index.html answers them.
        status, ctype, body = _get(base + "/viewer?StudyInstanceUIDs=1.2.3")
        assert (status, body) == (200, b"<html>OHIF index</html>") and ctype.startswith("text/html")
        assert _get(base + "/app.bundle.js")[1].startswith("text/javascript")
        assert _get(base + "/x.wasm")[1] == "application/wasm"
        assert _get(base + "/app-config.js")[2] == b"window.config = 'ours';"
        # A path climbing out of dist never serves the file outside it.
        assert _get(base + "/..%2Fsecret.txt")[2] == b"<html>OHIF index</html>"


def test_proxy_forwards_dicomweb_splitting_includefield(fake_dist, upstream):
    dist, config = fake_dist
    with serving(upstream, dist_dir=dist, app_config=config) as base:
        status, ctype, body = _get(base + "/dicom-web/studies?includefield=00081030,00080060&limit=5")
        assert status == 200 and ctype == "application/dicom+json"
        assert json.loads(body)[0]["00080060"]["Value"] == ["CT"]
        method, path, host = _Upstream.seen[-1]
        assert path == "/dicom-web/studies?includefield=00081030&includefield=00080060&limit=5"
        # Orthanc writes its links for the Host it sees: the proxy's, so they come back here.
        assert host == base.removeprefix("http://")
        # A chunked upstream answer arrives whole.
        status, _, body = _get(base + "/dicom-web/studies?chunked=1")
        assert status == 200 and json.loads(body)[0]["00080060"]["Value"] == ["CT"]


def test_proxy_says_502_when_orthanc_is_down(fake_dist):
    dist, config = fake_dist
    from conftest import free_port

    with serving(f"http://127.0.0.1:{free_port()}/dicom-web/", dist_dir=dist, app_config=config) as base:
        status, _, body = _get(base + "/dicom-web/studies")
        assert status == 502 and b"Orthanc DICOMweb unreachable" in body


# --- the viewer ------------------------------------------------------------------------

#: OHIF warnings (not errors) that our objects still cause, with the reason. Anything
#: else OHIF says fails the test, so a new message has to be looked at.
#: Toasts that are expected and harmless (none today: the SEG now recommends a colour).
KNOWN_WARNINGS: tuple[str, ...] = ()


@pytest.mark.peers
def test_ohif_shows_report_on_key_slice_gradcam_overlay_and_lung_seg(tmp_path):
    reason = orthanc_missing_reason(dicomweb=True) or viewer_missing_reason()
    if reason:
        pytest.skip(reason)
    from dataclasses import replace

    from dicomnode.writers import WriterOptions, build_result_objects, read_findings
    from pipeline.types import LungMask

    from writer_inputs import make_inputs

    inputs = make_inputs(seed=0, n_slices=24, size=96, label="covid19")
    # A U-Net's result: its lesion map gives the SEG its lesion segments (issue 15).
    lung = inputs.result.lung_mask
    with_lesions = LungMask(mask=lung.mask, method="unet", lesion=inputs.lesion & lung.mask, lobes=lung.lobes)
    result = replace(inputs.result, lung_mask=with_lesions)
    options = WriterOptions()
    objects = build_result_objects(result, inputs.volume, inputs.sources, options)
    seg_labels = [str(item.SegmentLabel) for item in objects["seg"][0].SegmentSequence]
    assert "Ground-glass opacity" in seg_labels, seg_labels
    assert objects["sc"], "the test inputs must give at least one Grad-CAM overlay"
    findings = read_findings(objects["sr"][0])
    key_instance = next(int(ds.InstanceNumber) for ds in inputs.sources if ds.SOPInstanceUID == findings.key_sop_uid)
    # OHIF 3.13 labels a region with "<NUM concept meaning>: <value to 2 decimals> <unit>".
    covid_label = f"COVID-19 probability: {100 * findings.probabilities['covid19']:.2f} %"
    shots = tmp_path / "screenshots"

    with running_orthanc(tmp_path, aet="PACS", dicomweb=True) as pacs:
        upload(pacs, inputs.sources)
        for kind in ("sr", "sc", "seg", "kos", "lobe_seg"):
            upload(pacs, objects[kind])
        with serving(pacs.dicomweb_url + "/") as base:
            report = run_driver(
                {
                    "baseUrl": base,
                    "studyUid": str(inputs.sources[0].StudyInstanceUID),
                    "outDir": str(shots),
                    "srSeries": options.sr_series_number,
                    "srTexts": [covid_label],
                    "scSeries": options.sc_series_number,
                    "segSeries": options.seg_series_number,
                    "segLabels": seg_labels,
                    "timeoutMs": 40000,
                }
            )
    summary = json.dumps({k: v for k, v in report.items() if k != "steps"}, indent=1)
    steps = report.get("steps", {})
    assert report["ok"], f"the driver stopped: {report.get('error')}\n{summary}"
    unexpected = [t for t in report["toasts"] if not any(k in t for k in KNOWN_WARNINGS)]
    assert not unexpected, f"OHIF showed an error or a new warning: {unexpected}"
    assert not report["pageErrors"], f"uncaught errors in the page: {report['pageErrors']}"
    assert not report["httpErrors"], f"failed requests (proxy/Orthanc): {report['httpErrors']}"

    listed = {t["series"] for t in steps["ct"]["thumbnails"]}
    expected = {
        str(inputs.sources[0].SeriesNumber),
        str(options.sr_series_number),
        str(options.sc_series_number),
        str(options.seg_series_number),
        str(options.kos_series_number),
        str(options.lobe_seg_series_number),
    }
    assert expected <= listed, f"series missing from OHIF's study browser: {steps['ct']['thumbnails']}"
    assert steps["ct"]["canvas"]["colouredFraction"] < 0.001, "the CT itself should be grey"

    sr = steps["sr"]
    if sr.get("recoveries"):
        # OHIF 3.13.2 sometimes opens the key slice without drawing; the driver steps with
        # the viewport's SR arrows (docs/radiologist.md tells readers the same).
        print(f"OHIF needed {sr['recoveries']} before drawing the SR")
    drawn = " ".join(sr["annotationTexts"])
    assert covid_label in drawn, (
        f"COVID-19 probability not drawn; OHIF drew: {sr['annotationTexts']}; "
        f"OHIF console warnings: {report.get('consoleWarnings', [])[:10]}"
    )
    assert re.search(rf"\bI:{key_instance}\b", sr["overlay"]["bottom-right"]), (
        f"the SR should open on the key slice (instance {key_instance}); viewport says {sr['overlay']}"
    )
    assert sr["canvas"]["litFraction"] > 0.05, "the key slice is not rendered under the findings"

    sc = steps["sc"]
    assert str(objects["sc"][0].SeriesDescription) in sc["overlay"]["top-left"]
    assert sc["canvas"]["colouredFraction"] > 0.01, f"no heat map colours in the overlay: {sc['canvas']}"
    seg = steps["seg"]
    assert seg["canvas"]["colouredFraction"] > 0.001, f"the lung SEG is not drawn over the CT: {seg['canvas']}"
    assert seg["segmentLabelsShown"] == seg_labels, f"OHIF's segmentation panel lists {seg['segmentLabelsShown']}"
    for name in ("ct", "sr", "sc", "seg"):
        png = shots / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"screenshot {png} missing"


@pytest.mark.peers
def test_ohif_draws_the_trend_of_a_multi_stage_report(tmp_path):
    """A report with priors (dicomnode/writers/trend.py): OHIF opens it without an error
    and draws each study date's group and the fused group on the key slice."""
    reason = orthanc_missing_reason(dicomweb=True) or viewer_missing_reason()
    if reason:
        pytest.skip(reason)
    import datetime as dt

    from dicomnode.writers import WriterOptions, build_result_objects, read_findings
    from dicomnode.writers.trend import Trend
    from pipeline.stages import fuse_stages, stage_from_summary

    from writer_inputs import make_inputs

    inputs = make_inputs(seed=0, n_slices=24, size=96, label="covid19")
    prior_summary = {
        "decision": "non_pneumonia",
        "probabilities": {"non_pneumonia": 0.8123, "cap": 0.0677, "influenza": 0.05, "covid19": 0.07},
        "tasks": {"pneumonia_vs_non_pneumonia": 0.2},
        "lung_involvement_percent": 0.4,
    }
    current = stage_from_summary(
        inputs.result.summary(inputs.volume), str(inputs.sources[0].StudyInstanceUID), dt.date(2026, 1, 1), True
    )
    prior = stage_from_summary(prior_summary, "1.2.826.0.1.3680043.8.498.1", dt.date(2025, 11, 20))
    fused = fuse_stages([current, prior])
    trend = Trend(fused, (), (), 730)
    options = WriterOptions(enabled={"sr"}, trend=trend)
    (sr,) = build_result_objects(inputs.result, inputs.volume, inputs.sources, options)["sr"]
    findings = read_findings(sr)
    covid_label = f"COVID-19 probability: {100 * findings.probabilities['covid19']:.2f} %"
    prior_label = "No pneumonia probability: 81.23 %"  # the prior date's group, its decision first
    fused_first = (
        max(fused.probabilities, key=lambda k: fused.probabilities[k])
        if fused.decision == "indeterminate"
        else fused.decision
    )
    names = {"non_pneumonia": "No pneumonia", "cap": "CAP", "influenza": "Influenza", "covid19": "COVID-19"}
    fused_label = f"{names[fused_first]} probability: {100 * fused.probabilities[fused_first]:.2f} %"

    with running_orthanc(tmp_path, aet="PACS", dicomweb=True) as pacs:
        upload(pacs, inputs.sources)
        upload(pacs, [sr])
        with serving(pacs.dicomweb_url + "/") as base:
            report = run_driver(
                {
                    "baseUrl": base,
                    "studyUid": str(inputs.sources[0].StudyInstanceUID),
                    "outDir": str(tmp_path / "screenshots"),
                    "srSeries": options.sr_series_number,
                    "srTexts": [covid_label, prior_label, fused_label],
                    "timeoutMs": 40000,
                }
            )
    summary = json.dumps({k: v for k, v in report.items() if k != "steps"}, indent=1)
    assert report["ok"], f"the driver stopped: {report.get('error')}\n{summary}"
    unexpected = [t for t in report["toasts"] if not any(k in t for k in KNOWN_WARNINGS)]
    assert not unexpected, f"OHIF showed an error or a new warning: {unexpected}"
    assert not report["pageErrors"], f"uncaught errors in the page: {report['pageErrors']}"
    drawn = " ".join(report["steps"]["sr"]["annotationTexts"])
    for label in (covid_label, prior_label, fused_label):
        assert label in drawn, f"{label!r} not drawn; OHIF drew: {report['steps']['sr']['annotationTexts']}"
    # OHIF labels a region with every NUM it finds, a time point order too: none is written
    assert "Time Point Order" not in drawn
