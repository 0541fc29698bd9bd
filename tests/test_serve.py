"""`cnnlab serve`: the demo page end to end in headless Chromium, and bad uploads that must not crash it.

Truth: `cnnlab predict` (the calibrated top class and probability of the same file); the browser drives
the page's real file input through the DevTools protocol (`DOM.setFileInputFiles`), spoken over a
minimal WebSocket client written here with the standard library (no browser-automation package needed).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
import urllib.request
import zlib
from pathlib import Path
from urllib.parse import urlparse

import pytest
from PIL import Image

import cnnlab
from cnnlab.cli.main import main
from cnnlab.inspect.serve import MAX_UPLOAD, make_server
from cnnlab.training.calibrate import calibrate
from cnnlab.training.predict import predict

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SPEC = "conv3x3-8 maxpool2 conv3x3-8 fc10"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("serve")
    run = base / "run"
    cnnlab.train(model=SPEC, data="digits", epochs=1, batch_size=64, lr=0.01, val_fraction=0.1, out=str(run),
                 verbose=False, quiet=True)
    calibrate(run)
    image = base / "digit.png"
    Image.fromarray(cnnlab.data.load_dataset("digits").test.images[11, 0].numpy()).save(image)
    server = make_server(run, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"run": run, "image": image, "url": f"http://127.0.0.1:{server.server_address[1]}/", "base": base}
    server.shutdown()
    server.server_close()


def post(url: str, data: bytes, name: str = "x.png") -> tuple[int, dict]:
    req = urllib.request.Request(url + "predict", data=data, method="POST", headers={"X-Filename": name})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid 1x1 PNG whose header declares `width` x `height` pixels (a few bytes that would decode to 10 GB)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[12:ihdr + 13])))
    return bytes(data)


def test_the_answer_is_predicts_calibrated_top_classes_with_a_grad_cam_overlay(served):
    status, answer = post(served["url"], served["image"].read_bytes(), "digit.png")
    assert status == 200
    want = predict(served["run"], [served["image"]], top_k=5)[0]
    assert [t["class"] for t in answer["top"]] == [name for name, _ in want.top]
    assert [t["probability"] for t in answer["top"]] == pytest.approx([p for _, p in want.top], abs=1e-6)
    assert answer["calibrated"] and answer["temperature"] != 1.0
    png = base64.b64decode(answer["overlay"].split(",", 1)[1])
    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG" and min(img.size) >= 224


@pytest.mark.parametrize("data, status, words", [
    (b"", 400, "empty"),
    (b"this is text, not a picture", 400, "not an image"),
    (bomb_png(), 400, "decompression bomb"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, 400, "not an image"),  # a truncated PNG
])
def test_bad_uploads_get_a_message_and_the_server_keeps_serving(served, data, status, words):
    got, answer = post(served["url"], data, "bad.png")
    assert got == status and words in answer["error"] and "\n" not in answer["error"]
    assert post(served["url"], served["image"].read_bytes())[0] == 200  # still serving


def test_an_upload_over_the_limit_is_refused_before_it_is_read(served):
    u = urlparse(served["url"])
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.putrequest("POST", "/predict")
    conn.putheader("Content-Length", str(MAX_UPLOAD + 1))
    conn.endheaders()  # no body sent: the server must answer from the header alone
    r = conn.getresponse()
    assert r.status == 413 and "more than" in json.loads(r.read())["error"]
    conn.close()
    assert post(served["url"], served["image"].read_bytes())[0] == 200


def test_bad_serve_arguments_are_one_line(served, capsys, tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        for argv in (["serve", str(tmp_path / "nope")], ["serve", str(served["run"]), "--port", "70000"],
                     ["serve", str(served["run"]), "--port", str(busy.getsockname()[1])]):
            with pytest.raises(SystemExit) if "70000" in argv else contextlib.nullcontext():
                assert main(argv) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "error" in err
    finally:
        busy.close()


# ---- the browser -----------------------------------------------------------------------------------
class DevTools:
    """Just enough of the Chrome DevTools protocol over a WebSocket (RFC 6455) to drive one page."""

    def __init__(self, ws_url: str):
        u = urlparse(ws_url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=60)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert b" 101 " in head.split(b"\r\n")[0], head
        self.ids = 0

    def _exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            out += chunk
        return out

    def _message(self) -> str:
        data = b""
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._exact(8))[0]
            payload = self._exact(n)
            if b0 & 0x0F in (0, 1, 2):
                data += payload
                if b0 & 0x80:
                    return data.decode()

    def call(self, method: str, **params):
        self.ids += 1
        msg = json.dumps({"id": self.ids, "method": method, "params": params}).encode()
        n = len(msg)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n)
                                if n < 65536 else bytes([0x80 | 127]) + struct.pack(">Q", n))
        mask = os.urandom(4)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(msg)))
        while True:
            reply = json.loads(self._message())
            if reply.get("id") == self.ids:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def js(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def upload(self, selector: str, path: Path) -> None:
        root = self.call("DOM.getDocument")["root"]["nodeId"]
        node = self.call("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.call("DOM.setFileInputFiles", files=[str(path)], nodeId=node)

    def wait(self, expression: str, seconds: float = 60):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(expression)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's package)")
def test_upload_in_headless_chromium_shows_the_class_predict_gives(served, tmp_path):
    profile = tmp_path / "profile"
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
    proc = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        end = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()) and time.monotonic() < end:
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
            target = next(t for t in json.loads(r.read()) if t["type"] == "page")
        page = DevTools(target["webSocketDebuggerUrl"])
        page.call("Page.navigate", url=served["url"])
        page.wait("document.readyState === 'complete' && !!document.getElementById('file')")

        page.upload("#file", served["image"])
        assert page.wait("document.getElementById('status').textContent.startsWith('done') "
                         "&& document.getElementById('top1').textContent")
        shown = page.js("document.getElementById('top1').textContent")
        first_row = page.js("document.querySelector('#top tr').innerText")
        want = predict(served["run"], [served["image"]], top_k=1)[0].top[0]
        assert shown == want[0]
        assert f"{100 * want[1]:.1f}%" in first_row
        assert page.js("document.getElementById('overlay').naturalWidth") >= 224

        text = served["base"] / "notes.png"
        text.write_text("not an image")
        page.upload("#file", text)
        message = page.wait("document.getElementById('status').textContent === 'error' "
                            "&& document.getElementById('message').textContent")
        assert "not an image" in message
    finally:
        proc.terminate()
        proc.wait(timeout=30)
