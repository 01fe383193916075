"""Node configuration: a TOML file -> a frozen, typed ``NodeConfig``.

``load_config(path)`` reads the file once and returns a frozen pydantic model; nothing
else in the node reads configuration. Every problem found is collected (unknown keys
with a did-you-mean, bad ports, illegal AE titles, duplicate destinations, an unwritable
data folder) and raised together in one ``ConfigError`` so that an admin fixes them in
one go; ``dicomnode config check`` prints the same list.

Relative paths in the file (``data_dir``, ``bundle``, the ``tls_*_file`` keys) resolve against the folder of the
config file, so a config works whatever the current directory is; paths given on the
command line resolve against the current directory, like any command-line path.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

#: A kind of result object (dicomnode.writers builds each).
ObjectKind = Literal["sr", "sc", "seg", "kos", "lobe_seg"]
#: The kinds of result object, in the order they are built and sent (the one list).
OBJECT_KINDS: tuple[ObjectKind, ...] = get_args(ObjectKind)
AE_TITLE_MAX = 16
#: The repository's embedded default configuration.
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config" / "node.toml"


def ae_title_problem(value: Any) -> str | None:
    """Why ``value`` is not a usable AE title, or None when it is fine."""
    if not isinstance(value, str):
        return f"must be text, got {type(value).__name__}"
    if not value.strip(" "):
        return "is empty (an AE title needs 1 to 16 characters)"
    if len(value) > AE_TITLE_MAX:
        return f"{value!r} has {len(value)} characters; an AE title has at most {AE_TITLE_MAX}"
    if "\\" in value:
        return f"{value!r} contains a backslash, which DICOM does not allow in an AE title"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return f"{value!r} contains a control character, which DICOM does not allow in an AE title"
    if any(ord(c) > 126 for c in value):
        return f"{value!r} contains a non-ASCII character; use plain ASCII letters, digits, '-' or '_'"
    if value != value.strip(" "):
        return f"{value!r} has leading or trailing spaces, which DICOM ignores; remove them"
    return None


def _check_ae(value: str) -> str:
    problem = ae_title_problem(value)
    if problem:
        raise ValueError(f"AE title {problem}")
    return value


def _check_ae_titles(values: tuple[str, ...]) -> tuple[str, ...]:
    for title in values:
        _check_ae(title)
    return values


def _pairs(value: Any) -> Any:
    """A TOML table of lists (``{ key = ["a", "b"] }``) as hashable (key, values) pairs."""
    if isinstance(value, Mapping):
        return tuple((k, tuple(v) if isinstance(v, (list, tuple)) else (v,)) for k, v in value.items())
    return value


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AllowedPeer(_Frozen):
    """``[[node.allowed_peers]]``: a sender, by its AE title and the networks it calls from."""

    ae_title: str
    #: Addresses or networks (CIDR), IPv4 or IPv6, e.g. ["10.1.2.0/24", "10.1.9.17"].
    addresses: tuple[str, ...]

    _ae = field_validator("ae_title")(_check_ae)

    @field_validator("addresses")
    @classmethod
    def _networks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        import ipaddress

        if not v:
            raise ValueError("addresses must list at least one address or network")
        for text in v:
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise ValueError(f"{text!r} is not an IP address or network (CIDR)") from None
        return v

    def admits(self, calling_ae: str, address: str) -> bool:
        import ipaddress

        if calling_ae != self.ae_title:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in ipaddress.ip_network(n, strict=False) for n in self.addresses)


class NodeSection(_Frozen):
    """``[node]``: who we are on the network and where we keep data."""

    ae_title: str = "COVIDNODE"
    #: The plain DICOM port; 0 switches it off (then ``tls_port`` must be set).
    port: int = Field(11112, ge=0, le=65535)
    bind_address: str = "0.0.0.0"
    #: Calling AE titles allowed to associate; empty means any.
    allowed_calling_ae_titles: tuple[str, ...] = ()
    data_dir: Path = Path("data")
    #: A series is complete after this many seconds without a new instance.
    quiet_seconds: float = Field(10.0, gt=0)
    #: A series is complete at once when its last sender releases and its slices are whole
    #: (one orientation, evenly spaced, no gap); the quiet period stays the rule for the rest.
    complete_on_release: bool = True
    #: Largest PDU we accept (bytes); large PDUs mean fewer reads per image.
    max_pdu: int = Field(1048576, ge=0)
    #: C-STORE is refused with 0xA700 below this much free disk space (MB).
    min_free_mb: int = Field(500, ge=0)
    #: Received instances are made durable in a write-ahead journal (``<data_dir>/journal``,
    #: one shared fdatasync) and their files written behind it; off: each file and its
    #: folder are fsynced before the answer (slower; dicomnode.journal says why).
    journal: bool = True
    #: Size of one journal segment (MB), preallocated; larger instances bypass the journal.
    journal_segment_mb: int = Field(32, ge=1, le=4096)
    #: New associations are refused (transient) below this much free space (MB; 0: off):
    #: a sender is turned away before a series, not in the middle of one.
    refuse_associations_below_mb: int = Field(0, ge=0)
    #: Jobs not acknowledged within this many seconds are given back to the queue.
    job_lease_seconds: float = Field(3600.0, gt=0)
    #: A job that failed this many times (crash, kill) is marked failed.
    max_job_attempts: int = Field(3, ge=1)
    workers: int = Field(1, ge=1, le=16)
    # Limits of the listener; see docs/admin.md.
    #: Associations at once, in all.
    max_associations: int = Field(32, ge=1, le=1024)
    #: Associations at once from one peer address (0: no limit): idle strangers on one
    #: host cannot take every slot.
    max_associations_per_address: int = Field(8, ge=0, le=1024)
    #: Associations at once with one calling AE title (0: no limit).
    max_associations_per_ae: int = Field(0, ge=0, le=1024)
    #: Senders by AE title and network; set: only they may associate (an AE title alone
    #: is a claim anyone can make).
    allowed_peers: tuple[AllowedPeer, ...] = ()
    #: Of ``max_associations``, this many are kept for the senders ``reserved_for`` names
    #: (calling AE titles, e.g. the scanners): idle strangers cannot take them.
    reserved_associations: int = Field(0, ge=0, le=1024)
    reserved_for: tuple[str, ...] = ()
    #: TCP connections that have not (yet) associated, at once; more are closed at once.
    max_pending_connections: int = Field(64, ge=1, le=4096)
    #: A peer must complete its A-ASSOCIATE-RQ within this deadline (seconds).
    association_timeout_s: float = Field(30.0, gt=0)
    #: Longest wait for the next message of an association (seconds).
    idle_timeout_s: float = Field(60.0, gt=0)
    #: Longest time one message (a C-STORE with its dataset) may take to arrive (seconds).
    message_timeout_s: float = Field(600.0, gt=0)
    #: Longest wait for a peer's answer when the node sends (a DIMSE response, network
    #: data; seconds): deliveries use it, the listener has the three timeouts above.
    network_timeout_s: float = Field(60.0, gt=0)
    #: Largest dataset accepted in one C-STORE (MB); larger is aborted before it is buffered.
    max_instance_mb: int = Field(2048, ge=1)
    # DICOM TLS (PS3.15 B.1): a second listener on ``tls_port`` (0: none).
    tls_port: int = Field(0, ge=0, le=65535)
    #: The node's certificate (PEM, chain first) and its private key.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    #: CA certificates (PEM) that client certificates are checked against.
    tls_ca_file: Path | None = None
    #: Refuse a TLS peer that shows no certificate signed by ``tls_ca_file``.
    tls_require_client_cert: bool = False
    #: Client certificate subject (its common name) -> the calling AE titles it may use;
    #: empty: any. A TLS association whose certificate is not listed, or that claims
    #: another AE title, is refused.
    tls_client_subjects: tuple[tuple[str, tuple[str, ...]], ...] = ()

    _ae = field_validator("ae_title")(_check_ae)

    @field_validator("tls_client_subjects", mode="before")
    @classmethod
    def _subjects(cls, v: Any) -> Any:
        v = _pairs(v)
        for _subject, titles in v:
            _check_ae_titles(titles)
        return v

    _titles = field_validator("allowed_calling_ae_titles", "reserved_for")(_check_ae_titles)

    @model_validator(mode="after")
    def _tls_pair(self) -> "NodeSection":
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both for DICOM TLS, or neither")
        if self.tls_port and self.tls_cert_file is None:
            raise ValueError("tls_port needs tls_cert_file and tls_key_file")
        if self.tls_cert_file is not None and not self.tls_port:
            raise ValueError("tls_cert_file is set but tls_port is 0: give the TLS listener a port")
        if (self.tls_require_client_cert or self.tls_client_subjects) and self.tls_ca_file is None:
            raise ValueError("client certificates (tls_require_client_cert, tls_client_subjects) need tls_ca_file")
        if self.port == 0 and not self.tls_port:
            raise ValueError("port 0 switches the plain listener off: set tls_port, or the node listens nowhere")
        if self.port and self.port == self.tls_port:
            raise ValueError(f"port and tls_port are both {self.port}; use two ports")
        if self.reserved_associations >= self.max_associations:
            raise ValueError(
                f"reserved_associations ({self.reserved_associations}) must be smaller than "
                f"max_associations ({self.max_associations})"
            )
        if self.reserved_associations and not self.reserved_for:
            raise ValueError("reserved_associations needs reserved_for: the AE titles the slots are kept for")
        return self

    def reserved_sender(self, calling_ae: str) -> bool:
        """Whether this sender may use the reserved slots."""
        return calling_ae in {a.strip() for a in self.reserved_for}

    def peer_refusal(self, calling_ae: str, address: str) -> str | None:
        """Why ``allowed_peers`` refuses this sender, or None."""
        if not self.allowed_peers or any(p.admits(calling_ae, address) for p in self.allowed_peers):
            return None
        return f"calling AE {calling_ae!r} from {address} is not in allowed_peers"


def _check_keyword(keyword: str) -> str:
    from pydicom.datadict import tag_for_keyword

    if tag_for_keyword(keyword) is None:
        raise ValueError(
            f"{keyword!r} is not a DICOM attribute keyword (e.g. RequestedProcedurePriority, "
            "InstitutionalDepartmentName)"
        )
    return keyword


class UrgentRules(_Frozen):
    """``[selection.urgent]``: a series that matches any rule is urgent; its job is
    claimed before every routine one. Empty (the default): every series is routine."""

    #: The sending AE (Source Application Entity Title of the stored files).
    calling_ae_titles: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()
    #: BodyPartExamined values (upper case).
    body_parts: tuple[str, ...] = ()
    #: DICOM keyword -> values that make a series urgent (compared stripped, upper case);
    #: a TOML table ``tags = { RequestedProcedurePriority = ["STAT"] }``, kept as pairs.
    tags: tuple[tuple[str, tuple[str, ...]], ...] = ()

    _titles = field_validator("calling_ae_titles")(_check_ae_titles)

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, v: Any) -> Any:
        v = _pairs(v)
        for keyword, _values in v:
            _check_keyword(keyword)
        return v

    @property
    def active(self) -> bool:
        return bool(self.calling_ae_titles or self.modalities or self.body_parts or self.tags)


class SelectionSection(_Frozen):
    """``[selection]``: which completed series are analysed; rules are data."""

    modalities: tuple[str, ...] = ("CT",)
    min_slices: int = Field(16, ge=1)
    #: Fewest slices a job's series may have when it is read for analysis: lower than
    #: ``min_slices`` so that a series cut short (flagged, then completed) still runs.
    min_slices_readable: int = Field(10, ge=2)
    #: Instances whose ImageType contains one of these are left out of the volume;
    #: a series with nothing left is skipped (e.g. "localizer only").
    refuse_image_types: tuple[str, ...] = ("LOCALIZER",)
    #: BodyPartExamined values accepted (upper case); empty accepts any (and missing).
    body_parts: tuple[str, ...] = ()
    #: Thicker slices than this are refused; 0 switches the rule off.
    max_slice_thickness_mm: float = Field(10.0, ge=0)
    urgent: UrgentRules = UrgentRules()


class PipelineSection(_Frozen):
    """``[pipeline]``: which model bundle runs and how."""

    bundle: Path | None = None  # None: pipeline.models.DEFAULT_BUNDLE_DIR
    device: str = "auto"
    top_k: int = Field(3, ge=1)
    max_overlays: int = Field(5, ge=0)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", v):
            raise ValueError(f"device {v!r} is not one of auto, cpu, cuda, cuda:N, mps")
        return v


class DeliverySection(_Frozen):
    """``[delivery]``: retries of C-STORE to destinations."""

    #: Keep retrying a destination this long after the first try, then give up loudly.
    retry_window_hours: float = Field(24.0, gt=0)
    backoff_base_seconds: float = Field(30.0, gt=0)
    backoff_max_seconds: float = Field(1800.0, gt=0)
    #: How often the delivery timer looks for due sends.
    poll_seconds: float = Field(2.0, gt=0)
    connect_timeout_seconds: float = Field(10.0, gt=0)


class HttpSection(_Frozen):
    """``[http]``: the admin API, metrics and health checks (dicomnode.admin_api)."""

    #: TCP port of the admin API; 0 switches it off.
    port: int = Field(0, ge=0, le=65535)
    #: Loopback by default: the API can retry and cancel jobs. Any other address needs a token.
    bind_address: str = "127.0.0.1"
    #: Environment variable holding the bearer token (the token itself never goes in a file
    #: of the repository or in the logs). Required when bind_address is not loopback.
    token_env: str = "DICOMNODE_HTTP_TOKEN"

    @property
    def is_loopback(self) -> bool:
        import ipaddress

        try:
            return ipaddress.ip_address(self.bind_address).is_loopback
        except ValueError:
            return self.bind_address == "localhost"


class Destination(_Frozen):
    """``[[destinations]]``: a PACS or viewer the results are sent to."""

    name: str = ""
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    objects: tuple[ObjectKind, ...] = OBJECT_KINDS
    #: DICOM TLS to this destination; its certificate is checked against ``tls_ca_file``
    #: (else the system's CAs) and its host name; ``tls_cert_file``/``tls_key_file``: ours,
    #: for a destination that requires client certificates.
    tls: bool = False
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    _ae = field_validator("ae_title")(_check_ae)

    @model_validator(mode="after")
    def _tls_files(self) -> "Destination":
        given = [f for f in (self.tls_ca_file, self.tls_cert_file, self.tls_key_file) if f is not None]
        if given and not self.tls:
            raise ValueError("tls_* files are set but tls is false; set tls = true")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        return self

    @property
    def label(self) -> str:
        """How logs and ``status`` name this destination."""
        return self.name or f"{self.ae_title}@{self.host}:{self.port}"


class FhirDestination(_Frozen):
    """``[[fhir_destinations]]``: a FHIR R4 server that gets each analysis as a transaction
    Bundle (DiagnosticReport, Observations, ImagingStudy; dicomnode.fhir), with the same
    durable retries as DICOM deliveries."""

    name: str = ""
    #: The server's base URL (the Bundle is POSTed to it); http:// or https://.
    url: str
    #: Name of the environment variable holding a bearer token (the token itself is kept
    #: out of the config file and the logs); empty: no Authorization header.
    token_env: str = ""
    #: CA certificates (PEM) the server's certificate is checked against (else the system's).
    ca_file: Path | None = None
    timeout_s: float = Field(30.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", v):
            raise ValueError(f"url {v!r} must be an http:// or https:// base URL without query or fragment")
        return v.rstrip("/")

    @property
    def key(self) -> str:
        """How deliveries and ``status`` name this destination."""
        return f"FHIR@{self.url}"

    @property
    def label(self) -> str:
        return self.name or self.key


class Hl7Destination(_Frozen):
    """``[[hl7_destinations]]``: a RIS/EHR interface engine that gets each analysis as an
    HL7 v2.5 ORU^R01 over MLLP (dicomnode.hl7), with the DICOM deliveries' durable retries."""

    name: str = ""
    host: str
    port: int = Field(ge=1, le=65535)
    #: MSH-5 and MSH-6 of the messages (as the interface engine expects them).
    receiving_application: str = ""
    receiving_facility: str = ""
    #: MSH-4: our facility.
    sending_facility: str = ""
    #: MLLP over TLS, the server checked against ``tls_ca_file`` (else the system's CAs).
    tls: bool = False
    tls_ca_file: Path | None = None
    timeout_s: float = Field(30.0, gt=0)

    @property
    def key(self) -> str:
        """How deliveries and ``status`` name this destination."""
        return f"HL7@{self.host}:{self.port}"

    @property
    def label(self) -> str:
        return self.name or self.key


class HousekeepingSection(_Frozen):
    """``[housekeeping]``: when delivered series and their results are deleted
    (dicomnode.housekeeping); both rules off by default: nothing is deleted."""

    #: Purge delivered series this many days after they were completed (0: never by age).
    retention_days: float = Field(0.0, ge=0)
    #: Purge the oldest delivered series while storage and results exceed this (0: no limit).
    max_storage_gb: float = Field(0.0, ge=0)
    interval_minutes: float = Field(60.0, gt=0)


class PriorsSection(_Frozen):
    """``[priors]``: where the node asks for a patient's earlier chest CT studies
    (dicomnode.priors: C-FIND at study level, C-MOVE to the node's own AE title). Off by
    default; when on, ``ae_title``, ``host`` and ``port`` name the PACS's query/retrieve
    SCP, which must know the node's AE title as a move destination."""

    enabled: bool = False
    ae_title: str = "PACS"
    host: str = "127.0.0.1"
    port: int = Field(104, ge=1, le=65535)
    #: How far back to look for earlier studies (days before the new study's date).
    lookback_days: int = Field(730, ge=1)
    #: At most this many earlier studies are retrieved, the most recent first.
    max_studies: int = Field(2, ge=1, le=20)
    #: Only studies holding this modality count (ModalitiesInStudy).
    modality: str = "CT"
    #: Seconds a C-FIND or C-MOVE may take before it is given up, and the longest a new
    #: study's job waits for its priors' analyses before its report goes out without them.
    timeout_s: float = Field(300.0, gt=0)
    #: How the stages are fused into the multi-stage decision (pipeline.stages): "mean"
    #: (the default: the mean of the stages' scores), "max" (the worst stage's pneumonia
    #: evidence) or "latest" (the new study alone; the trend is shown).
    fusion_rule: Literal["mean", "max", "latest"] = "mean"
    #: Send the results of a retrieved prior study to the destinations too (by default
    #: they are kept in the results folder: the PACS had the prior's report already).
    deliver_prior_results: bool = False

    _ae = field_validator("ae_title")(_check_ae)


class CxrSection(_Frozen):
    """``[cxr]``: the CXR branch (pipeline.cxr): the study's CT localizer read as a chest
    x-ray by the bundle's CXR model and fused with the CT result. It runs only with a
    bundle that has a CXR model (``dicomnode train cxr``); without one, or off, the report
    is the CT's alone."""

    #: Pair each CT series with the localizer of its study and run the CXR model on it.
    enabled: bool = True
    #: Instances whose ImageType holds one of these are the study's localizers.
    localizer_image_types: tuple[str, ...] = ("LOCALIZER",)
    #: Plain chest radiographs (``radiograph_modalities``) sent alone get the CXR model's
    #: result, a radiograph-only report (dicomnode.radiograph_job); off by default.
    radiographs_alone: bool = False
    radiograph_modalities: tuple[str, ...] = ("DX", "CR")


class BrokerSection(_Frozen):
    """``[broker]``: scale-out over Redis with Dramatiq (dicomnode.broker); off by default.

    With a ``url``, ``dicomnode serve`` runs no analysis itself: it sends each job to the
    broker and ``dicomnode worker`` processes (same config, same shared data folder) run
    them; the node records their results and delivers them (docs/admin.md, Scaling out).
    """

    #: ``redis://HOST:PORT/DB`` (or ``rediss://`` for TLS, ``unix:///path``); empty: off,
    #: the embedded single process.
    url: str = ""
    #: Key prefix in Redis: several nodes can share one Redis with different namespaces.
    namespace: str = "dicomnode"
    #: A worker process silent this long is dead: its unfinished job goes to another worker.
    heartbeat_timeout_s: float = Field(60.0, ge=1)
    #: Share of broker commands that also look for dead workers (Dramatiq's maintenance):
    #: 1 looks every time (tests), Dramatiq's own default 0.001 may take many minutes.
    maintenance_chance: float = Field(0.05, gt=0, le=1)
    #: Jobs handed to the broker and not finished yet, at most: the rest wait in the node's
    #: own queue, where urgent ones still go first. Set it to at least the number of workers.
    max_in_flight: int = Field(4, ge=1, le=1024)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"url {value!r} is not a Redis URL; use redis://HOST:PORT/DB (or leave it empty: off)")
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.url)


class NodeConfig(_Frozen):
    node: NodeSection = NodeSection()
    selection: SelectionSection = SelectionSection()
    pipeline: PipelineSection = PipelineSection()
    delivery: DeliverySection = DeliverySection()
    http: HttpSection = HttpSection()
    housekeeping: HousekeepingSection = HousekeepingSection()
    priors: PriorsSection = PriorsSection()
    cxr: CxrSection = CxrSection()
    broker: BrokerSection = BrokerSection()
    destinations: tuple[Destination, ...] = ()
    fhir_destinations: tuple[FhirDestination, ...] = ()
    hl7_destinations: tuple[Hl7Destination, ...] = ()
    #: The file this came from (None: built in code).
    source: Path | None = None

    @property
    def data_dir(self) -> Path:
        return self.node.data_dir

    @property
    def bundle_dir(self) -> Path:
        if self.pipeline.bundle is not None:
            return self.pipeline.bundle
        from pipeline.models import DEFAULT_BUNDLE_DIR  # late: keeps torch out of config checks

        return DEFAULT_BUNDLE_DIR

    def summary(self) -> str:
        dests = ", ".join(d.label for d in self.destinations) or "none"
        return (
            f"AE {self.node.ae_title} on {self.node.bind_address}:{self.node.port}, "
            f"data in {self.node.data_dir}, quiet period {self.node.quiet_seconds:g} s, "
            f"{len(self.destinations)} destination(s): {dests}"
            + (
                f", {len(self.fhir_destinations)} FHIR: {', '.join(d.label for d in self.fhir_destinations)}"
                if self.fhir_destinations
                else ""
            )
            + (
                f", {len(self.hl7_destinations)} HL7: {', '.join(d.label for d in self.hl7_destinations)}"
                if self.hl7_destinations
                else ""
            )
            + (", scale-out: jobs go to dicomnode worker processes through [broker]" if self.broker.enabled else "")
        )


_SECTIONS: Mapping[str, type[_Frozen]] = {
    "node": NodeSection,
    "selection": SelectionSection,
    "pipeline": PipelineSection,
    "delivery": DeliverySection,
    "http": HttpSection,
    "housekeeping": HousekeepingSection,
    "priors": PriorsSection,
    "cxr": CxrSection,
    "broker": BrokerSection,
}


def _unknown_keys(where: str, given: Iterable[str], known: Iterable[str]) -> list[str]:
    known = list(known)
    problems = []
    for key in given:
        if key in known:
            continue
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(known)}"
        problems.append(f"{where}: unknown key '{key}'{hint}")
    return problems


def _structure_problems(raw: Mapping[str, Any]) -> list[str]:
    """Unknown sections/keys, with suggestions (pydantic would only say 'extra')."""
    top_known = [*_SECTIONS, "destinations", "fhir_destinations", "hl7_destinations"]
    problems = _unknown_keys("top level", raw, top_known)
    for name, model in _SECTIONS.items():
        if isinstance(raw.get(name), dict):
            problems += _unknown_keys(f"[{name}]", raw[name], model.model_fields)
        elif name in raw:
            problems.append(f"'{name}' must be a table ([{name}]), got {type(raw[name]).__name__}")
    dests = raw.get("destinations", [])
    if not isinstance(dests, list):
        problems.append("'destinations' must be a list of tables ([[destinations]])")
    else:
        for i, d in enumerate(dests):
            if isinstance(d, dict):
                problems += _unknown_keys(f"[[destinations]] #{i + 1}", d, Destination.model_fields)
    for table, model in (("fhir_destinations", FhirDestination), ("hl7_destinations", Hl7Destination)):
        given = raw.get(table, [])
        if not isinstance(given, list):
            problems.append(f"'{table}' must be a list of tables ([[{table}]])")
            continue
        for i, d in enumerate(given):
            if isinstance(d, dict):
                problems += _unknown_keys(f"[[{table}]] #{i + 1}", d, model.model_fields)
    return problems


def _plain(err: Mapping[str, Any]) -> str:
    loc = [str(p) for p in err["loc"]]
    if len(loc) >= 2 and loc[0] in ("destinations", "fhir_destinations", "hl7_destinations") and loc[1].isdigit():
        where = f"[[{loc[0]}]] #{int(loc[1]) + 1}" + (f" {'.'.join(loc[2:])}" if loc[2:] else "")
    elif loc:
        where = f"[{loc[0]}] {'.'.join(loc[1:])}" if len(loc) > 1 else loc[0]
    else:
        where = "file"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "missing":
        msg = "is required but missing"
    elif err["type"] in ("greater_than_equal", "less_than_equal") and loc[-1] == "port":
        msg = f"port {err.get('input')!r} is out of range; use 1-65535"
    elif err["type"] == "literal_error" and "objects" in loc:
        msg = f"object kind {err.get('input')!r} is unknown; use some of {', '.join(OBJECT_KINDS)}"
    return f"{where}: {msg}"


def _writable_problem(path: Path) -> str | None:
    """Why the node could not write ``path`` (creating it if needed), or None."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        return f"[node] data_dir: {path} cannot be created: {probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"[node] data_dir: {path} is not writable by this user (check {probe}'s owner and mode)"
    return None


def _duplicate_problems(raw_dests: Any) -> list[str]:
    """Duplicate destinations, from the raw tables (so they are found even when another
    key of the file is invalid)."""
    if not isinstance(raw_dests, list):
        return []
    problems = []
    seen: dict[tuple[str, str, str], int] = {}
    names: dict[str, int] = {}
    for i, d in enumerate(raw_dests):
        if not isinstance(d, dict):
            problems.append(f"[[destinations]] #{i + 1}: must be a table with ae_title, host and port")
            continue
        key = (str(d.get("ae_title")), str(d.get("host", "")).lower(), str(d.get("port")))
        if key in seen:
            problems.append(
                f"[[destinations]] #{i + 1}: duplicate of destination #{seen[key] + 1} "
                f"({key[0]}@{d.get('host')}:{key[2]}); results would be sent twice, remove one"
            )
        else:
            seen[key] = i
        name = d.get("name")
        if name and name in names:
            problems.append(
                f"[[destinations]] #{i + 1}: name '{name}' is already used by destination "
                f"#{names[name] + 1}; names must be unique"
            )
        elif name:
            names[name] = i
    return problems


def _semantic_problems(cfg: NodeConfig) -> list[str]:
    problems = []
    for i, d in enumerate(cfg.destinations):
        if d.host in ("127.0.0.1", "localhost", "::1") and d.port == cfg.node.port and d.ae_title == cfg.node.ae_title:
            problems.append(f"[[destinations]] #{i + 1}: points at this node itself; results would loop")
    if cfg.delivery.backoff_max_seconds < cfg.delivery.backoff_base_seconds:
        problems.append("[delivery] backoff_max_seconds is smaller than backoff_base_seconds")
    writable = _writable_problem(cfg.node.data_dir)
    if writable:
        problems.append(writable)
    if cfg.pipeline.bundle is not None and not (cfg.pipeline.bundle / "model_card.json").is_file():
        problems.append(
            f"[pipeline] bundle: {cfg.pipeline.bundle} has no model_card.json "
            f"(point it at a model bundle folder, or leave it out for the shipped demo bundle)"
        )
    if cfg.cxr.radiographs_alone and cfg.broker.enabled:
        problems.append(
            "[cxr] radiographs_alone: radiographs sent alone are analysed by the node's own worker, not by "
            "scale-out workers; switch [broker] off or radiographs_alone off"
        )
    from .tls import tls_problems  # late: tls imports this module

    problems += tls_problems(cfg.node, cfg.destinations)
    problems += _fhir_problems(cfg.fhir_destinations)
    seen: dict[str, int] = {}
    for i, h in enumerate(cfg.hl7_destinations):
        if h.key in seen:
            problems.append(
                f"[[hl7_destinations]] #{i + 1}: duplicate of #{seen[h.key] + 1} ({h.key}); "
                f"messages would be sent twice"
            )
        seen.setdefault(h.key, i)
        if h.tls_ca_file is not None and not h.tls_ca_file.is_file():
            problems.append(f"[[hl7_destinations]] #{i + 1}: tls_ca_file {h.tls_ca_file} does not exist")
        if h.tls_ca_file is not None and not h.tls:
            problems.append(f"[[hl7_destinations]] #{i + 1}: tls_ca_file is set but tls is false; set tls = true")
    return problems


def _fhir_problems(fhir: Sequence[FhirDestination]) -> list[str]:
    problems = []
    seen: dict[str, int] = {}
    for i, d in enumerate(fhir):
        where = f"[[fhir_destinations]] #{i + 1}"
        if d.url in seen:
            problems.append(f"{where}: duplicate of #{seen[d.url] + 1} ({d.url}); reports would be sent twice")
        seen.setdefault(d.url, i)
        if d.token_env and not os.environ.get(d.token_env):
            problems.append(f"{where}: token_env names {d.token_env}, which is not set in this environment")
        if d.ca_file is not None and not d.ca_file.is_file():
            problems.append(f"{where}: ca_file {d.ca_file} does not exist")
        if d.url.startswith("http://") and d.token_env:
            problems.append(f"{where}: a bearer token over plain http:// would travel in clear text; use https://")
    return problems


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    node = raw.get("node")
    if isinstance(node, dict) and isinstance(node.get("data_dir"), str):
        node["data_dir"] = str((base / node["data_dir"]).resolve())
    pipe = raw.get("pipeline")
    if isinstance(pipe, dict) and isinstance(pipe.get("bundle"), str):
        pipe["bundle"] = str((base / pipe["bundle"]).resolve())
    if isinstance(node, dict):
        raw["node"] = _resolve_tls_files(node, base)
    if isinstance(raw.get("destinations"), list):
        raw["destinations"] = [_resolve_tls_files(d, base) if isinstance(d, dict) else d for d in raw["destinations"]]
    for table, key in (("fhir_destinations", "ca_file"), ("hl7_destinations", "tls_ca_file")):
        if isinstance(raw.get(table), list):
            raw[table] = [
                {**d, key: str((base / d[key]).resolve())} if isinstance(d, dict) and isinstance(d.get(key), str) else d
                for d in raw[table]
            ]
    return raw


TLS_FILE_KEYS = ("tls_cert_file", "tls_key_file", "tls_ca_file")


def _resolve_tls_files(table: Mapping[str, Any], base: Path) -> dict[str, Any]:
    return {k: str((base / v).resolve()) if k in TLS_FILE_KEYS and isinstance(v, str) else v for k, v in table.items()}


def config_from_dict(
    raw: Mapping[str, Any], base_dir: Path, source: str = "<dict>", check_filesystem: bool = True
) -> NodeConfig:
    """Build a NodeConfig from parsed TOML; raise ConfigError listing every problem."""
    problems = _structure_problems(raw) + _duplicate_problems(raw.get("destinations"))
    resolved = _resolve_paths(dict(raw), base_dir)
    cfg: NodeConfig | None = None
    try:
        cfg = NodeConfig.model_validate(resolved)
    except ValidationError as e:
        for err in e.errors():
            text = _plain(err)
            # Unknown keys were already reported with a suggestion.
            if err["type"] != "extra_forbidden":
                problems.append(text)
    if cfg is not None and check_filesystem:
        problems += _semantic_problems(cfg)
    if problems or cfg is None:
        raise ConfigError(source, problems)
    return cfg


def load_config(path: Path | str, check_filesystem: bool = True) -> NodeConfig:
    """Read and check a TOML config file. Raises ConfigError with every problem found."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), [f"file not found: {path} (copy config/node.toml and edit it)"]) from None
    except OSError as e:
        raise ConfigError(str(path), [f"cannot read {path}: {e.strerror}"]) from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(path), [f"not valid TOML: {e}"]) from e
    cfg = config_from_dict(raw, path.resolve().parent, str(path), check_filesystem)
    return cfg.model_copy(update={"source": path.resolve()})


def parse_destination(text: str) -> Destination:
    """``AE@HOST:PORT`` (command-line form) -> Destination; ValueError says what is wrong."""
    m = re.fullmatch(r"(?P<ae>[^@]+)@(?P<host>[^:@]+|\[[^\]]+\]):(?P<port>\d+)", text)
    if not m:
        raise ValueError(f"destination {text!r} is not AE@HOST:PORT (e.g. PACS@10.0.0.5:104)")
    try:
        return Destination(ae_title=m["ae"], host=m["host"].strip("[]"), port=int(m["port"]))
    except ValidationError as e:
        raise ValueError(f"destination {text!r}: " + "; ".join(_plain(x) for x in e.errors())) from None


def with_overrides(
    cfg: NodeConfig,
    *,
    ae_title: str | None = None,
    port: int | None = None,
    data_dir: Path | None = None,
    quiet_seconds: float | None = None,
    bind_address: str | None = None,
    bundle: Path | None = None,
    destinations: Iterable[Destination] | None = None,
    http_port: int | None = None,
    http_bind: str | None = None,
    tls: Mapping[str, Any] | None = None,
) -> NodeConfig:
    """A copy with command-line overrides applied and re-validated. ``tls``: [node] tls_*
    keys (``tls_port``, ``tls_cert_file``...) with their values; files resolve against
    the current directory."""
    node = cfg.node.model_dump()
    for key, value in (tls or {}).items():
        if value is not None:
            node[key] = Path(value).resolve() if key in TLS_FILE_KEYS else value
    http = cfg.http.model_dump()
    for key, value in (("port", http_port), ("bind_address", http_bind)):
        if value is not None:
            http[key] = value
    for key, value in (
        ("ae_title", ae_title),
        ("port", port),
        ("quiet_seconds", quiet_seconds),
        ("bind_address", bind_address),
    ):
        if value is not None:
            node[key] = value
    if data_dir is not None:
        node["data_dir"] = Path(data_dir).resolve()
    pipe = cfg.pipeline.model_dump()
    if bundle is not None:
        pipe["bundle"] = Path(bundle).resolve()
    data = cfg.model_dump()
    data.update(node=node, pipeline=pipe, http=http)
    if destinations is not None:
        data["destinations"] = [d.model_dump() for d in destinations]
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError("command line", [_plain(x) for x in e.errors()]) from None
