"""Build the documentation site and check it in a real browser (headless Chromium).

    python scripts/check_docs.py              # mkdocs build --strict into site/, then the browser check
    python scripts/check_docs.py --no-build   # check an existing site/

Serves ``site/`` on a local port, opens the home, API and paper pages in headless Chromium through the
DevTools protocol (a minimal WebSocket client from the standard library, no Selenium), and fails (exit 1, one
line per problem) unless on every page each ``<img>`` loaded (``naturalWidth > 0``), the page has the figures
it should, and no raw marker is left in the text: Sphinx roles (``:func:``), unrendered mkdocstrings
directives (``::: heterograd``), snippet markers (``--8<--``) or a one-seed ``± 0.00``. Needs ``mkdocs`` (the
``docs`` extra) and the Debian packages ``chromium`` (``apt-get install chromium chromium-driver``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import http.server
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# page -> (what it is, at least this many loaded figures, texts the page must show)
PAGES: dict[str, tuple[str, int, tuple[str, ...]]] = {
    "index.html": ("home", 1, ("heterograd.convert", "Guides")),
    "api/nn/index.html": ("API: converted models", 0, ("heterograd.nn.convert.convert", "heterograd.nn.probe.probe")),
    "api/models/index.html": ("API: model zoo", 0, ("heterograd.models.mlp.mlp", "heterograd.models.resnet.resnet")),
    "reproduction/PAPER/index.html": ("the paper's figures", 5, ("Fig. 2a",)),
    "reproduction/convnets/convnets/index.html": ("the convnets report", 3, ("LeNet-5",)),
}
RAW_MARKERS = (
    re.compile(r":(?:func|class|meth|mod|data|attr|obj|exc):"),
    re.compile(r"^::: heterograd", re.M),
    re.compile(r"--8<--"),
    re.compile(r"± 0\.00\b"),
)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
    "--remote-allow-origins=*",
]
# Evaluated in the page once it has loaded: every image, its natural width, and the visible text.
PROBE_JS = """
new Promise(resolve => {
  const done = () => Promise.all([...document.images].map(i => i.complete ? null :
      new Promise(r => { i.onload = i.onerror = r; }))).then(() => resolve(JSON.stringify({
        images: [...document.images].map(i => [i.getAttribute('src'), i.naturalWidth]),
        text: document.body.innerText,
        ids: [...document.querySelectorAll('[id]')].map(e => e.id)})));
  if (document.readyState === 'complete') done(); else addEventListener('load', done);
})
"""


# --------------------------------------------------------------------------- a minimal WebSocket client
class WebSocket:
    """Just enough of RFC 6455 for the DevTools protocol: text frames, masked sends, fragmented receives."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        m = re.match(r"ws://([^/:]+):(\d+)(/.*)", url)
        if not m:
            raise ValueError(f"not a ws:// URL: {url}")
        host, port, path = m.group(1), int(m.group(2)), m.group(3)
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("the browser closed the DevTools connection during the handshake")
            head += chunk
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status:
            raise ConnectionError(f"DevTools handshake failed: {status.decode(errors='replace')}")
        self.buffer = head.split(b"\r\n\r\n", 1)[1]

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the browser closed the DevTools connection")
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def send(self, text: str) -> None:
        payload = text.encode()
        header = bytearray([0x81])
        n = len(payload)
        if n < 126:
            header.append(0x80 | n)
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        self.sock.sendall(bytes(header) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def recv(self) -> str:
        message = b""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            data = self._read(n)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise ConnectionError("the browser closed the DevTools connection")
            if opcode in (0x1, 0x2, 0x0):
                message += data
                if b0 & 0x80:
                    return message.decode()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# --------------------------------------------------------------------------- the browser
@contextlib.contextmanager
def serve(site: Path) -> Iterator[str]:
    """Serve ``site`` on a free local port; yields the base URL."""
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]  # a tab closed early
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def chromium(binary: str) -> Iterator[str]:
    """Start headless Chromium with a fresh profile; yields its DevTools HTTP endpoint."""
    profile = tempfile.mkdtemp(prefix="check-docs-chromium-")
    proc = subprocess.Popen(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        endpoint = None
        assert proc.stderr is not None
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                raise RuntimeError(f"chromium exited with code {proc.returncode} before DevTools started")
            m = re.search(r"DevTools listening on ws://([^/]+)/", line)
            if m:
                endpoint = f"http://{m.group(1)}"
                break
        if endpoint is None:
            raise RuntimeError("chromium did not start DevTools within 60 s")
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining its log
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)


def open_page(endpoint: str, url: str) -> dict[str, Any]:
    """Open ``url`` in a new tab, wait for it and its images to load; ``{"images", "text", "ids"}``."""
    req = urllib.request.Request(f"{endpoint}/json/new?{url}", method="PUT")
    with urllib.request.urlopen(req, timeout=30) as r:
        target = json.loads(r.read())
    ws = WebSocket(target["webSocketDebuggerUrl"])
    calls = iter(range(1, 1_000_000))

    def evaluate(expression: str) -> dict[str, Any]:
        call = next(calls)
        params = {"expression": expression, "awaitPromise": True, "returnByValue": True}
        ws.send(json.dumps({"id": call, "method": "Runtime.evaluate", "params": params}))
        while True:
            msg = json.loads(ws.recv())
            if msg.get("id") == call:
                return msg

    try:
        deadline = time.monotonic() + 60
        while True:  # the new tab starts on about:blank: wait until it shows the page, fully loaded
            state = evaluate("document.readyState + ' ' + location.href").get("result", {}).get("result", {})
            if state.get("value") == f"complete {url}":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not load within 60 s (last state: {state.get('value')!r})")
            time.sleep(0.2)
        msg = evaluate(PROBE_JS)
    finally:
        ws.close()
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"{endpoint}/json/close/{target['id']}", timeout=10).close()
    result = msg.get("result", {}).get("result", {})
    if "value" not in result:
        raise RuntimeError(f"could not read {url}: {msg}")
    return json.loads(result["value"])


def check_page(name: str, page: dict[str, Any], min_figures: int, must_show: tuple[str, ...]) -> list[str]:
    """Problems with one loaded page, as lines."""
    problems = []
    broken = [src for src, width in page["images"] if not width]
    if broken:
        problems.append(f"{name}: images that did not load: {broken}")
    loaded = sum(1 for _, width in page["images"] if width)
    if loaded < min_figures:
        problems.append(f"{name}: {loaded} figure(s) loaded, expected at least {min_figures}")
    haystack = page["text"] + "\n" + "\n".join(page["ids"])
    for needle in must_show:
        if needle not in haystack:
            problems.append(f"{name}: does not show {needle!r}")
    for pattern in RAW_MARKERS:
        m = pattern.search(page["text"])
        if m:
            start = max(0, m.start() - 40)
            problems.append(f"{name}: raw marker {m.group(0)!r} in ...{page['text'][start : m.end() + 40]!r}...")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-build", action="store_true", help="check the existing --site instead of building it")
    parser.add_argument("--site", type=Path, default=ROOT / "site", help="the built site (default: site/)")
    parser.add_argument("--chromium", default=None, help="the browser binary (default: chromium on PATH)")
    args = parser.parse_args(argv)
    binary = args.chromium or shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        print("error: chromium not found; install it: apt-get install chromium chromium-driver", file=sys.stderr)
        return 2
    if not args.no_build:
        env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
        build = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(args.site)]
        if subprocess.run(build, cwd=ROOT, env=env).returncode != 0:
            print("error: mkdocs build --strict failed (see above)", file=sys.stderr)
            return 1
    if not (args.site / "index.html").is_file():
        print(f"error: no site at {args.site}; build it first (drop --no-build)", file=sys.stderr)
        return 2
    problems: list[str] = []
    with serve(args.site) as base, chromium(binary) as endpoint:
        for path, (name, min_figures, must_show) in PAGES.items():
            page = open_page(endpoint, base + path)
            found = check_page(name, page, min_figures, must_show)
            problems += found
            figures = sum(1 for _, w in page["images"] if w)
            print(f"{'ok  ' if not found else 'FAIL'} {name} ({path}): {figures} figure(s) loaded")
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
