"""`ava bench capacity --nodes N`'s balancer: docker/nginx.conf with one upstream line per node
(the shipped options kept), accepted by `nginx -t`; and where the nodes run."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from benchmarks.balancer import nginx_conf, node_cores
from tests.test_deployment_manifests import nginx_binary


def test_the_shipped_config_fronts_any_number_of_nodes(tmp_path: Path) -> None:
    upstreams = ["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003"]
    conf = nginx_conf(upstreams, "127.0.0.1:18081", tmp_path, workers=1)
    servers = re.findall(r"^\s*server\s+(\S+) max_fails=2 fail_timeout=10s;$", conf, re.M)
    assert servers == upstreams
    assert "least_conn;" in conf and "worker_processes 1;" in conf
    assert "listen 127.0.0.1:18081;" in conf and "ava-1" not in conf
    path = tmp_path / "nginx.conf"
    path.write_text(conf)
    checked = subprocess.run(
        [nginx_binary(), "-t", "-q", "-p", str(tmp_path), "-c", str(path), "-e", "stderr"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stderr


def test_nodes_get_their_own_cores_only_when_there_are_enough() -> None:
    assert node_cores(2, None, None) == [None, None]  # not pinned
    assert node_cores(3, 0, 1) in ([0, 0, 0], [0, 2, 3])  # shared, or one core each
    assert node_cores(1, 0, 1) == [0]
