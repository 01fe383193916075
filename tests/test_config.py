"""Config: every problem kind is named in plain words; overrides; the shipped file is fine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dicomnode.commands import config_cmd
from dicomnode.config import (
    DEFAULT_CONFIG_PATH,
    OBJECT_KINDS,
    ae_title_problem,
    load_config,
    parse_destination,
    with_overrides,
)
from dicomnode.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return list(info.value.problems)


def test_shipped_config_is_valid_and_resolves_data_dir_against_its_folder():
    cfg = load_config(DEFAULT_CONFIG_PATH)
    assert cfg.node.ae_title == "COVIDNODE"
    assert cfg.node.data_dir == (DEFAULT_CONFIG_PATH.parent / "../data").resolve()
    assert cfg.node.quiet_seconds == 10


def test_defaults_when_sections_are_missing(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    assert cfg.node.port == 11112 and cfg.pipeline.top_k == 3 and cfg.destinations == ()
    assert cfg.node.data_dir == Path("data")  # relative default: the working directory's data/


def test_unknown_key_gets_a_did_you_mean(tmp_path):
    found = problems(tmp_path, '[node]\nae_titel = "X"\n')
    assert any("unknown key 'ae_titel'" in p and "did you mean 'ae_title'" in p for p in found)


def test_unknown_section(tmp_path):
    found = problems(tmp_path, "[nodes]\nport = 1\n")
    assert any("unknown key 'nodes'" in p and "'node'" in p for p in found)


def test_broker_and_priors_sections(tmp_path):
    cfg = load_config(write(tmp_path, '[broker]\nurl = "redis://127.0.0.1:6379/0"\n[priors]\nenabled = true\n'))
    assert cfg.broker.enabled and cfg.broker.heartbeat_timeout_s == 60 and cfg.priors.enabled
    assert not load_config(write(tmp_path, "")).broker.enabled  # off by default: one process
    found = problems(tmp_path, '[broker]\nurl = "amqp://x"\nheartbeet_timeout_s = 5\n')
    assert any("not a Redis URL" in p for p in found)
    assert any("did you mean 'heartbeat_timeout_s'" in p for p in found)


def test_cxr_section(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    assert cfg.cxr.enabled and cfg.cxr.localizer_image_types == ("LOCALIZER",) and not cfg.cxr.radiographs_alone
    assert not load_config(write(tmp_path, "[cxr]\nenabled = false\n")).cxr.enabled
    assert load_config(DEFAULT_CONFIG_PATH).cxr.enabled  # the shipped file pairs localizers
    assert load_config(write(tmp_path, "[cxr]\nradiographs_alone = true\n")).cxr.radiographs_alone
    found = problems(tmp_path, '[cxr]\nradiographs_alone = true\n[broker]\nurl = "redis://127.0.0.1:6379/0"\n')
    assert any("radiographs_alone" in p and "scale-out workers" in p for p in found)
    found = problems(tmp_path, "[cxr]\nlocalizer_types = []\n")
    assert any("did you mean 'localizer_image_types'" in p for p in found)


@pytest.mark.parametrize("port", [70000, -1])
def test_bad_port(tmp_path, port):
    found = problems(tmp_path, f"[node]\nport = {port}\n")
    assert any("port" in p and "1-65535" in p for p in found)


def test_port_0_needs_the_tls_listener(tmp_path):
    found = problems(tmp_path, "[node]\nport = 0\n")
    assert any("switches the plain listener off" in p and "tls_port" in p for p in found)


@pytest.mark.parametrize(
    "title,words",
    [
        ("ABCDEFGHIJKLMNOPQ", "at most 16"),
        ("A\\\\B", "backslash"),
        ("A\\tB", "control character"),
        ("   ", "empty"),
        (" PACS", "leading or trailing spaces"),
    ],
)
def test_bad_ae_titles(tmp_path, title, words):
    found = problems(tmp_path, f'[node]\nae_title = "{title}"\n')
    assert any(words in p for p in found), found


def test_ae_title_rules_directly():
    assert ae_title_problem("COVIDNODE") is None
    assert "16" in ae_title_problem("X" * 17)


def test_duplicate_destination_and_every_problem_at_once(tmp_path):
    found = problems(
        tmp_path,
        """
[node]
ae_titel = "X"
port = 70000
[[destinations]]
ae_title = "PACS"
host = "10.0.0.5"
port = 104
[[destinations]]
ae_title = "PACS"
host = "10.0.0.5"
port = 104
[[destinations]]
ae_title = "VIEWER"
host = "h"
port = 11112
objects = ["sr", "pdf"]
""",
    )
    assert any("duplicate of destination #1" in p for p in found)
    assert any("ae_titel" in p for p in found)
    assert any("1-65535" in p for p in found)
    assert any("'pdf' is unknown" in p for p in found)
    assert len(found) >= 4


def test_missing_destination_field(tmp_path):
    found = problems(tmp_path, '[[destinations]]\nae_title = "PACS"\nhost = "h"\n')
    assert any("#1 port" in p and "required" in p for p in found)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_data_dir(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        found = problems(tmp_path, f'[node]\ndata_dir = "{ro}/data"\n')
        assert any("not writable" in p for p in found)
    finally:
        ro.chmod(0o700)


def test_data_dir_that_is_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    found = problems(tmp_path, '[node]\ndata_dir = "afile/data"\n')
    assert any("is a file" in p for p in found)


def test_invalid_toml(tmp_path):
    found = problems(tmp_path, "[node\n")
    assert any("not valid TOML" in p for p in found)


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    sub = tmp_path / "etc"
    sub.mkdir()
    path = sub / "node.toml"
    path.write_text('[node]\ndata_dir = "../var/data"\n')
    assert load_config(path).node.data_dir == (tmp_path / "var" / "data").resolve()


def test_overrides_and_destination_parsing(tmp_path):
    cfg = load_config(write(tmp_path, '[[destinations]]\nae_title = "OLD"\nhost = "h"\nport = 1\n'))
    d = parse_destination("PACS@127.0.0.1:4242")
    assert (d.ae_title, d.host, d.port, d.objects) == ("PACS", "127.0.0.1", 4242, OBJECT_KINDS)
    cfg2 = with_overrides(
        cfg, ae_title="NEWAE", port=4000, data_dir=tmp_path / "d", quiet_seconds=0.5, destinations=[d]
    )
    assert cfg2.node.ae_title == "NEWAE" and cfg2.node.port == 4000 and cfg2.node.quiet_seconds == 0.5
    assert [x.ae_title for x in cfg2.destinations] == ["PACS"]
    with pytest.raises(ValueError, match="AE@HOST:PORT"):
        parse_destination("PACS-127.0.0.1-4242")
    with pytest.raises(ConfigError):
        with_overrides(cfg, port=99999)


def test_config_check_command(tmp_path, capsys):
    import argparse

    good = write(tmp_path, "[node]\nport = 4104\n")
    assert config_cmd.run(argparse.Namespace(action="check", file=good)) == 0
    assert "config OK" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text("[node]\nprot = 1\n")
    assert config_cmd.run(argparse.Namespace(action="check", file=bad)) == 1
    out = capsys.readouterr().out
    assert "did you mean 'port'" in out
