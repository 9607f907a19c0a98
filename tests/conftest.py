"""Shared fixtures.  The integration tier builds the real debian image once per run."""

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

TDX_IMAGE = [sys.executable, "-m", "imagebuilder"]
# Developers iterating on validate/boot tests may reuse a published build directory instead of
# building again; CI never sets this, so there the image is always built for real.
REUSE_BUILD = "TDX_IMAGE_TEST_BUILD"


def run_cli(*args, **kwargs) -> subprocess.CompletedProcess:
    """Run the real command line, as a user would."""
    return subprocess.run([*TDX_IMAGE, *map(str, args)], capture_output=True, text=True, **kwargs)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line of a failed command (asserting there is exactly one, and no
    traceback)."""
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.fixture(scope="session")
def debian_build(tmp_path_factory) -> Path:
    """The published output directory of one real `tdx-image build debian --boot-test`."""
    if os.environ.get(REUSE_BUILD):
        return Path(os.environ[REUSE_BUILD])
    out = tmp_path_factory.mktemp("build") / "debian"
    result = run_cli("build", "debian", "--out", out, "--boot-test", "--json")
    (out.parent / "build.stderr").write_text(result.stderr)
    assert result.returncode == 0, f"the debian build failed:\n{result.stderr[-4000:]}"
    return out


@pytest.fixture(scope="session")
def debian_image(debian_build) -> Path:
    return debian_build / json.loads((debian_build / "build.json").read_text())["image"]


@pytest.fixture
def repo_server():
    """A real HTTP server on loopback standing in for package repositories: 200 below /ok/,
    401 below /auth/ unless the login is u:right, 404 elsewhere."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.startswith("/ok/"):
                self.send_response(200)
            elif self.path.startswith("/auth/"):
                good = self.headers.get("Authorization") == "Basic dTpyaWdodA=="  # u:right
                self.send_response(200 if good else 401)
            else:
                self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
