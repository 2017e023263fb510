"""Self-signed certificates made by the tests themselves, with openssl."""

import shutil
import subprocess
from pathlib import Path

import pytest


def make_certificates(directory: Path) -> Path:
    """Writes `server.{crt,key}` (for `localhost`) and `client.{crt,key}` into `directory`."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is not installed (Debian package openssl)")
    for name in ["server", "client"]:
        subprocess.run(
            [
                openssl,
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "1",
                "-subj",
                f"/CN={'localhost' if name == 'server' else 'test-client'}",
                "-addext",
                "subjectAltName=DNS:localhost",
                "-keyout",
                str(directory / f"{name}.key"),
                "-out",
                str(directory / f"{name}.crt"),
            ],
            check=True,
            capture_output=True,
        )
    return directory
