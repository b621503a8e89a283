"""The region config file of ``crdtdb serve --config``: values, defaults, and every refusal."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from crdtdb.errors import UsageError
from crdtdb.sync.config import (
    ConfigError,
    PeerConfig,
    RegionConfig,
    TlsFiles,
    load_config,
    parse_address,
)

FULL = """\
region = "eu"
data_dir = "data/eu"
listen = "127.0.0.1:7401"
[tls]
ca = "certs/ca.pem"
cert = "certs/eu.pem"
key = "/etc/crdtdb/eu.key"
[[peers]]
region = "us"
address = "10.0.0.2:7402"
[[peers]]
region = "ap"
address = "[::1]:7403"
[sync]
anti_entropy_interval = 5
max_clock_offset_ms = 250
heartbeat_interval = 0.5
reconnect_min = 0.1
reconnect_max = 30.0
poll_interval = 0.01
"""

MINIMAL = """\
region = "eu"
data_dir = "data/eu"
listen = "127.0.0.1:7401"
[tls]
ca = "ca.pem"
cert = "eu.pem"
key = "eu.key"
"""


def write(directory: Path, text: str) -> Path:
    path = directory / "conf" / "eu.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_every_key_is_read_with_paths_relative_to_the_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL))
    base = (tmp_path / "conf").resolve()
    assert config.region == "eu"
    assert config.data_dir == base / "data" / "eu"
    assert (config.host, config.port) == ("127.0.0.1", 7401)
    assert config.tls == TlsFiles(
        ca=base / "certs" / "ca.pem", cert=base / "certs" / "eu.pem", key=Path("/etc/crdtdb/eu.key")
    )
    assert config.peers == (PeerConfig("us", "10.0.0.2", 7402), PeerConfig("ap", "::1", 7403))
    assert config.anti_entropy_interval == 5.0 and type(config.anti_entropy_interval) is float
    assert config.max_clock_offset_ms == 250 and type(config.max_clock_offset_ms) is int
    assert config.heartbeat_interval == 0.5
    assert (config.reconnect_min, config.reconnect_max) == (0.1, 30.0)
    assert config.poll_interval == 0.01


def test_a_relative_config_path_still_resolves_against_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, MINIMAL)
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("conf/eu.toml"))
    assert config.data_dir == (tmp_path / "conf" / "data" / "eu").resolve()
    assert config.data_dir.is_absolute() and config.tls.ca.is_absolute()


def test_optional_keys_take_the_documented_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.peers == ()
    assert config.anti_entropy_interval == 2.0
    assert config.max_clock_offset_ms == 500
    assert config.heartbeat_interval == 1.0
    assert (config.reconnect_min, config.reconnect_max) == (0.2, 10.0)
    assert config.poll_interval == 0.005
    defaults = {f.name: f.default for f in dataclasses.fields(RegionConfig)}
    for name in ("anti_entropy_interval", "max_clock_offset_ms", "poll_interval"):
        assert getattr(config, name) == defaults[name]


def test_an_empty_peer_list_and_sync_table_are_accepted(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "peers = []\n" + MINIMAL + "[sync]\n"))
    assert config.peers == () and config.heartbeat_interval == 1.0


@pytest.mark.parametrize("key", ["region", "data_dir", "listen", "tls"])
def test_each_required_key_is_required(tmp_path: Path, key: str) -> None:
    lines = MINIMAL.splitlines(keepends=True)
    if key == "tls":
        text = "".join(lines[:3])  # the [tls] table is the rest of the file
    else:
        text = "".join(line for line in lines if not line.startswith(f"{key} ="))
    with pytest.raises(ConfigError, match=f"the key '{key}' is required"):
        load_config(write(tmp_path, text))


BAD_FIELDS = [
    ('region = "eu"', 'region = "EU"', r"^region: invalid region name 'EU'"),
    ('region = "eu"', "region = 7", r"^region: invalid region name 7"),
    ('data_dir = "data/eu"', "data_dir = 1", r"^data_dir must be a path"),
    ('data_dir = "data/eu"', 'data_dir = ""', r"^data_dir must be a path"),
    ('listen = "127.0.0.1:7401"', 'listen = "127.0.0.1"', r"^listen: write the address as HOST"),
    ('listen = "127.0.0.1:7401"', "listen = 7401", r"^listen: write the address as HOST"),
    ('listen = "127.0.0.1:7401"', 'listen = "127.0.0.1:0"', r"^listen: .* port in 1\.\.65535"),
    ('listen = "127.0.0.1:7401"', 'listen = "h:65536"', r"^listen: .* port in 1\.\.65535"),
    ('listen = "127.0.0.1:7401"', 'listen = ":7401"', r"^listen: ':7401' is not HOST:PORT"),
    ('listen = "127.0.0.1:7401"', 'listen = "h:\u0663"', r"^listen: .* port in 1\.\.65535"),
    ('ca = "certs/ca.pem"', 'ca = ["certs/ca.pem"]', r"^\[tls\] ca must be a path"),
    ('ca = "certs/ca.pem"', 'cafile = "certs/ca.pem"', r"unknown key\(s\) \['cafile'\] in \[tls\]"),
    ('key = "/etc/crdtdb/eu.key"', "", r"^\[tls\] key must be a path"),
    ('region = "us"', 'region = "eu"', r"^\[\[peers\]\] #1: a region does not peer with itself"),
    ('region = "ap"', 'region = "us"', r"^\[\[peers\]\] #2: region 'us' is listed twice"),
    ('region = "ap"', 'region = "A P"', r"^\[\[peers\]\] #2 region: invalid region name"),
    ('address = "10.0.0.2:7402"', 'address = "10.0.0.2"', r"^\[\[peers\]\] #1 address: write"),
    ('address = "10.0.0.2:7402"', 'addr = "10.0.0.2:7402"', r"unknown key\(s\) \['addr'\] in \[\["),
    ("anti_entropy_interval = 5", "anti_entropy_interval = 0", r"^\[sync\] anti_entropy_interval"),
    ("heartbeat_interval = 0.5", "heartbeat_interval = -1.0", r"^\[sync\] heartbeat_interval must"),
    ("poll_interval = 0.01", "poll_interval = true", r"^\[sync\] poll_interval must be a positive"),
    ("poll_interval = 0.01", 'poll_interval = "fast"', r"^\[sync\] poll_interval must be a posi"),
    ("max_clock_offset_ms = 250", "max_clock_offset_ms = 0.5", r"max_clock_offset_ms must be a po"),
    ("reconnect_max = 30.0", "reconnect_maximum = 30.0", r"unknown key\(s\) \['reconnect_maxim"),
    ("[sync]", "[other]", r"unknown key\(s\) \['other'\] in .*eu\.toml"),
    ('region = "eu"', 'region = "eu"\nregoin = 1', r"unknown key\(s\) \['regoin'\] in .*\.toml"),
]


@pytest.mark.parametrize(("old", "new", "message"), BAD_FIELDS)
def test_each_bad_field_is_refused_with_its_name(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    assert FULL.count(old) >= 1
    path = write(tmp_path, FULL.replace(old, new, 1))
    with pytest.raises(ConfigError, match=message) as raised:
        load_config(path)
    assert isinstance(raised.value, UsageError)  # the CLI answers it with exit status 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('peers = "us"\n' + MINIMAL, r"peers must be an array of tables"),
        ("peers = [1]\n" + MINIMAL, r"\[\[peers\]\] #1 must be a table"),
        ('tls = "certs"\n' + MINIMAL.split("[tls]")[0], r"\[tls\] must be a table"),
        (MINIMAL + "[sync.extra]\n", r"unknown key\(s\) \['extra'\] in \[sync\]"),
    ],
)
def test_tables_of_the_wrong_shape_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no config file at .*nowhere\.toml"):
        load_config(tmp_path / "nowhere.toml")


def test_a_file_that_is_not_toml_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"eu\.toml is not valid TOML: .*line 2"):
        load_config(write(tmp_path, 'region = "eu"\nlisten = 127.0.0.1:7401\n'))


def test_a_file_that_is_not_text_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    path.write_bytes(b'region = "\xff\xfe"\n')
    with pytest.raises(ConfigError, match=r"eu\.toml is not UTF-8 text"):
        load_config(path)


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read the config file .*: Is a directory"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:7401", ("127.0.0.1", 7401)),
        ("[::1]:1", ("::1", 1)),
        ("eu.example.org:65535", ("eu.example.org", 65535)),
    ],
)
def test_parse_address(text: str, address: tuple[str, int]) -> None:
    assert parse_address(text, "listen") == address


@pytest.mark.parametrize("text", [None, "", "7401", "host:", "host:port", "host:-1", "[::1]"])
def test_parse_address_refuses_and_says_where(text: object) -> None:
    with pytest.raises(ConfigError, match=r"^\[\[peers\]\] #3 address: "):
        parse_address(text, "[[peers]] #3 address")


def test_the_cluster_table(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert (config.auto_join, config.advertise, config.seeds) == (False, None, ())
    assert config.dial_members is True
    text = MINIMAL + (
        '[cluster]\nauto_join = true\nadvertise = "10.0.0.1:7401"\n'
        'seeds = ["10.0.0.2:7402", "[::1]:7403"]\ndial_members = false\n'
    )
    config = load_config(write(tmp_path, text))
    assert config.auto_join is True and config.dial_members is False
    assert config.advertise == "10.0.0.1:7401"
    assert config.seeds == (("10.0.0.2", 7402), ("::1", 7403))


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('auto_join = "yes"', "auto_join must be true or false"),
        ("dial_members = 1", "dial_members must be true or false"),
        ('seeds = "10.0.0.2:7402"', "seeds is a list of addresses"),
        ('seeds = ["10.0.0.2"]', "seeds #1"),
        ('advertise = "nowhere"', "advertise"),
        ("auto_joins = true", "unknown key(s) ['auto_joins'] in [cluster]"),
    ],
)
def test_a_bad_cluster_table_is_refused(tmp_path: Path, table: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(write(tmp_path, MINIMAL + "[cluster]\n" + table + "\n"))
