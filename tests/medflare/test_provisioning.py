"""The provisioning project files: `nvflare provision` turns each into mutual-TLS startup kits for its participants."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO

NVFLARE = str(Path(sys.executable).parent / "nvflare")


@pytest.mark.parametrize("project, name, sites, port", [
    ("brats_project.yml", "clara_open_brats", ["site-1", "site-2"], 8002),
    ("pathology_project.yml", "clara_open_pathology", ["site-1"], 8102),
])
def test_provision_makes_tls_kits(tmp_path, project, name, sites, port):
    result = subprocess.run([NVFLARE, "provision", "-p", str(REPO / "provisioning" / project), "-w", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    prod = tmp_path / name / "prod_00"
    assert sorted(p.name for p in prod.iterdir()) == sorted(["localhost", "admin@clara-open.org", *sites])
    server = json.loads((prod / "localhost/startup/fed_server.json").read_text())["servers"][0]
    assert server["service"]["target"] == f"localhost:{port}" and server["connection_security"] == "mtls"
    for site in sites:
        startup = prod / site / "startup"
        assert {"client.crt", "client.key", "rootCA.pem", "start.sh", "fed_client.json"} <= {p.name for p in
                                                                                          startup.iterdir()}
    assert (prod / "admin@clara-open.org/startup/fed_admin.json").is_file()
