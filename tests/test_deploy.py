"""deploy/ stays true to the code: its configs pass the config check, and every command
line in its systemd units, compose file and image parses with the CLI we ship. (The
units also pass `systemd-analyze verify` and the compose file `docker-compose config`;
docs/admin.md says how, and what was not run.)"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from dicomnode.cli import build_parser
from dicomnode.config import load_config

from conftest import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"


@pytest.mark.parametrize("name", ["node.example.toml", "compose/node.toml"])
def test_deploy_configs_are_valid(name):
    cfg = load_config(DEPLOY / name, check_filesystem=False)
    assert cfg.node.data_dir == Path("/var/lib/covid-ct-node")


def test_compose_config_scales_out_to_orthanc():
    cfg = load_config(DEPLOY / "compose" / "node.toml", check_filesystem=False)
    assert cfg.broker.enabled and cfg.broker.url.startswith("redis://redis:")
    assert [(d.ae_title, d.host) for d in cfg.destinations] == [("ORTHANC", "orthanc")]
    orthanc = json.loads((DEPLOY / "compose" / "orthanc.json").read_text())
    assert orthanc["DicomModalities"]["covidnode"][0] == cfg.node.ae_title


def command_lines() -> list[list[str]]:
    """The dicomnode command lines of the units (ExecStart*), compose and Dockerfile."""
    found = []
    for unit in DEPLOY.glob("*.service"):
        for line in unit.read_text().splitlines():
            if re.match(r"ExecStart(Pre)?=", line):
                found.append(shlex.split(line.split("=", 1)[1].replace("%i", "0").replace("%H", "host")))
    for text in ((DEPLOY / "compose.yaml").read_text(), (DEPLOY / "Dockerfile").read_text()):
        for m in re.finditer(r'(?:command: |CMD )(\[.*?"dicomnode".*?\])', text):
            found.append(json.loads(m[1]))
    return found


def test_every_deploy_command_line_parses():
    lines = command_lines()
    commands = {Path(words[0]).name + " " + words[1] for words in lines}
    assert {"dicomnode serve", "dicomnode worker", "dicomnode config"} <= commands
    for words in lines:
        args = build_parser(words[1:]).parse_args(words[1:])
        assert args.command == words[1]
