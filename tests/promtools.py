"""The Prometheus field's own tools for the tests: promtool, node_exporter, prometheus_client.

scripts/test.sh installs Debian's `prometheus` package (promtool) and
`prometheus-node-exporter`; a test that needs one and does not find it fails
with that sentence instead of being skipped.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

NODE_EXPORTER_NAMES = ("prometheus-node-exporter", "node_exporter")


def tool(*names: str) -> str:
    for name in names:
        found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
        if found:
            return found
    pytest.fail(f"{names[0]} is not installed (scripts/test.sh installs it with apt)")


def promtool(*args: str, text: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("promtool"), *args], input=text, capture_output=True, text=True, timeout=60
    )


def check_metrics(text: str) -> str:
    """promtool's lint of an exposition: "" when clean, else what it says (and its status)."""
    done = promtool("check", "metrics", text=text)
    said = (done.stdout + done.stderr).strip()
    return "" if done.returncode == 0 and not said else f"exit {done.returncode}: {said}"


Series = tuple[str, frozenset]  # (sample name, {(label, value), ...})


def parse(text: str) -> tuple[dict[str, str], dict[Series, float]]:
    """prometheus_client's parser: ({family: type}, {(sample name, labels): value})."""
    types, samples = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
    return types, samples


def value(samples: dict[Series, float], metric: str, /, **labels: str) -> float:
    """The one sample of `metric` whose labels include `labels`."""
    found = [v for (n, ls), v in samples.items() if n == metric and set(labels.items()) <= ls]
    assert len(found) == 1, f"{metric}{labels}: {len(found)} samples"
    return found[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def node_exporter(textfile_dir: Path, log: Path):
    """A real node_exporter on a loopback port with only its textfile collector: yields scrape()."""
    port = free_port()
    argv = [
        tool(*NODE_EXPORTER_NAMES),
        "--collector.disable-defaults",
        "--collector.textfile",
        f"--collector.textfile.directory={textfile_dir}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with open(log, "ab") as output:
        process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT)

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            return answer.read().decode()

    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                scrape()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"node_exporter did not start: {log.read_text()}"
                    ) from None
                time.sleep(0.05)
        yield scrape
    finally:
        process.terminate()
        process.wait(10)
