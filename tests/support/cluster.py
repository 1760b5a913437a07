"""Several ``tessera serve`` nodes on one config, for the cluster tests.

Every node reads the same config file (``[cluster] nodes`` lists them all, as a deployment would);
only the port and the cache directory differ, given to each node by environment variables
(``TESSERA_SERVER__PORT``, ``TESSERA_CACHE__DIR``), which beat the file. A node can be killed
(SIGKILL) and started again on the same cache directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.moto_server import free_port
from tests.support.tessera_server import TESSERA, wait_healthy


@dataclass
class Node:
    """One node: its port, cache directory, log and (while running) process."""

    index: int
    port: int
    cache_dir: Path
    log: Path
    config: Path
    env: dict[str, str] = field(repr=False)
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        return f"http://{self.address}"

    def start(self, timeout: float = 30) -> None:
        """Start (or start again) and wait for ``/healthz``."""
        assert self.process is None or self.process.poll() is not None, "node already running"
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [TESSERA, "serve", "--config", str(self.config)], stdout=out, stderr=out, env=self.env
            )
        wait_healthy(self.base, self.process, self.log, timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash or a lost machine would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


@contextmanager
def cluster_nodes(tmp_path: Path, sections: str, count: int = 3, start: bool = True) -> Iterator[list[Node]]:
    """``count`` nodes on ``tmp_path/cluster.toml``: ``[server]`` (127.0.0.1, no access log), then
    ``[cluster] nodes`` with every node, then ``sections`` (the test's other sections, which may add keys
    to ``[cluster]`` by giving a ``[cluster]`` header of their own: its keys are merged). Node K keeps
    its cache in ``tmp_path/node-K/cache``. Yields the nodes, started unless ``start`` is false;
    stops them all at the end."""
    ports = [free_port() for _ in range(count)]
    nodes_line = "nodes = [" + ", ".join(f'"127.0.0.1:{p}"' for p in ports) + "]"
    body = sections
    if "[cluster]" in body:
        body = body.replace("[cluster]", f"[cluster]\n{nodes_line}", 1)
    else:
        body = f"[cluster]\n{nodes_line}\n{body}"
    config = tmp_path / "cluster.toml"
    config.write_text(f'[server]\nhost = "127.0.0.1"\naccess_log = false\n{body}\n')
    nodes: list[Node] = []
    for index, port in enumerate(ports):
        home = tmp_path / f"node-{index}"
        home.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, TESSERA_SERVER__PORT=str(port), TESSERA_CACHE__DIR=str(home / "cache"))
        nodes.append(Node(index, port, home / "cache", home / "serve.log", config, env))
    with ExitStack() as stack:
        for node in nodes:
            stack.callback(node.stop)
        if start:
            for node in nodes:
                node.start()
        yield nodes
