"""``crdtdb serve`` refusing to start: one ``error:`` line, exit status 2, nothing created."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .harness.config import make_certs, write_region_config
from .harness.ports import HOST, free_port
from .harness.process import python_env

pytestmark = pytest.mark.integration


def serve(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crdtdb", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=python_env(),
        check=False,
    )


def one_error(err: str) -> bool:
    return err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_a_missing_tls_file_is_one_line_and_creates_no_data_directory(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs", ["eu"])
    config = write_region_config(
        tmp_path / "eu.toml",
        region="eu",
        data_dir="data/eu",
        port=free_port(),
        certs=certs,
        peers={},
    )
    for name in ("ca.pem", "eu.key"):
        (certs / name).rename(certs / f"{name}.away")
        done = serve(config)
        assert done.returncode == 2 and one_error(done.stderr), done.stderr
        assert str(certs / name) in done.stderr and "crdtdb certs" in done.stderr
        assert not (tmp_path / "data").exists()  # once created before the files were read
        (certs / f"{name}.away").rename(certs / name)


def test_a_port_in_use_is_one_line_naming_the_address(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs", ["eu"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((HOST, 0))
        port = taken.getsockname()[1]
        config = write_region_config(
            tmp_path / "eu.toml",
            region="eu",
            data_dir="data/eu",
            port=port,
            certs=certs,
            peers={},
        )
        done = serve(config)
    # 1, not 2: the config is right, the machine is not ready for it (as `serve --check` says)
    assert done.returncode == 1 and one_error(done.stderr), done.stderr
    assert f"on {HOST}:{port}: the port is in use" in done.stderr
