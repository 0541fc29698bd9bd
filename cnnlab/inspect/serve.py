"""`serve(run)`: a local demo page: drop an image, see the top classes and where the network looked.

The page is one self-contained HTML document (inline CSS and script, nothing fetched from elsewhere) served
by the standard library's `ThreadingHTTPServer`; no web framework is needed. The browser posts the file's
bytes to `/predict`; the answer is JSON: the top classes with probabilities (calibrated with the run's
temperature when `cnnlab calibrate` has fitted one, and with the run's test-time augmentation, exactly as
`cnnlab predict` computes them) and a Grad-CAM overlay (Selvaraju et al., 2017, at the last convolutional
stage; `cnnlab.inspect.visual.maps.grad_cam`) as a PNG data URI. Class names reach the page as text
(`textContent`), never as markup.

Uploads are untrusted: an empty body, more than `MAX_UPLOAD` bytes, a file Pillow cannot read, and an image
of more than `MAX_PIXELS` pixels (a decompression bomb: a small file that decodes to gigabytes; the size is
read from the header before anything is decoded) each get a one-line message on the page and status 400 or
413. Any other failure is answered with status 500 and a message, and the server keeps serving.
The server listens on 127.0.0.1 (this machine only) unless another host is given.
"""

from __future__ import annotations

import base64
import html
import io
import json
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from cnnlab.core.figures import colormap
from cnnlab.core.preprocess import Preprocess
from cnnlab.core.run import open_run
from cnnlab.errors import CnnlabError
from cnnlab.inspect.visual import draw, maps
from cnnlab.training.predict import polarity_warning, predict_tensor, read_image
from cnnlab.training.run import load_model

MAX_UPLOAD = 20 << 20  # bytes of one upload
MAX_PIXELS = 40_000_000  # width x height an upload may declare (a 40-megapixel photo passes)
OVERLAY_SIDE = 224  # pixels: the overlay is drawn at least this large (28x28 inputs are enlarged)


class _Upload(io.BytesIO):
    """The uploaded bytes, named as the user's file in messages (`read_image` names what it reads)."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self.name = name

    def __str__(self) -> str:
        return self.name


class Demo:
    """A run's model, ready to classify uploads: `classify(bytes, name) -> dict` (the JSON the page shows)."""

    def __init__(self, run: str | Path, which: str = "best", top_k: int = 5):
        run_dir = open_run(run)
        self.model, self.card = load_model(run_dir, which)
        self.model = self.model.float().eval()
        self.tta = run_dir.read_config().get("config", {}).get("tta", "none") if run_dir.exists() else "none"
        self.top_k = min(top_k, self.card.num_classes)
        self.layer = maps.last_conv_stage(self.model, tuple(self.card.input_size))
        self.title = f"{run_dir.path.name}: {self.card.model} on {self.card.dataset}"
        self.lock = threading.Lock()  # one image at a time through the model

    def classify(self, data: bytes, name: str = "upload") -> dict[str, Any]:
        if not data:
            raise CnnlabError(f"'{name}' is empty (0 bytes); choose an image file")
        try:
            with Image.open(io.BytesIO(data)) as probe:
                w, h = probe.size
        except Image.DecompressionBombError:
            raise CnnlabError(f"'{name}' declares more pixels than Pillow opens safely (a decompression bomb?); "
                              "choose a smaller image") from None
        except (UnidentifiedImageError, OSError, ValueError):
            raise CnnlabError(f"'{name}' is not an image Pillow can read; choose a PNG, JPEG or other image") from None
        if w * h > MAX_PIXELS:
            raise CnnlabError(f"'{name}' declares {w}x{h} pixels, more than the {MAX_PIXELS:,} allowed "
                              "(it may be a decompression bomb); choose a smaller image")
        pixels, converted = read_image(_Upload(data, name), tuple(self.card.input_size))
        with self.lock:
            probs = predict_tensor(self.model, self.card, pixels.unsqueeze(0), self.tta)[0]
            values, indices = probs.topk(self.top_k)
            x = Preprocess(self.card.mean, self.card.std, channels_last=False)(pixels.unsqueeze(0))
            cam, _, _ = maps.grad_cam(self.model, x, self.layer, target=int(indices[0]))
        warning = polarity_warning(pixels, self.card.mean)
        return {"image": name, "converted": converted,
                "top": [{"class": self.card.classes[i], "probability": float(v)}
                        for v, i in zip(values.tolist(), indices.tolist(), strict=True)],
                "calibrated": self.card.temperature != 1.0, "temperature": self.card.temperature,
                "tta": self.tta, "layer": self.layer, "overlay": overlay_uri(pixels, cam),
                "warnings": [warning] if warning else []}


def overlay_uri(pixels: torch.Tensor, cam: torch.Tensor, alpha: float = 0.45) -> str:
    """uint8 `(C, H, W)` image and Grad-CAM `(H, W)` in [0, 1] -> PNG data URI of the map over the image
    (jet colours), enlarged with nearest-neighbour pixels to at least `OVERLAY_SIDE` on the shorter side."""
    c, h, w = pixels.shape
    scale = max(1, -(-OVERLAY_SIDE // min(h, w)))
    img = pixels.float() / 255.0
    img = img.expand(3, h, w) if c == 1 else img[:3]
    img = F.interpolate(img[None], scale_factor=scale, mode="nearest")[0].permute(1, 2, 0).numpy()
    heat = F.interpolate(cam[None, None].float(), scale_factor=scale, mode="bilinear", align_corners=False)[0, 0]
    colours = colormap("jet")(heat.clamp(0, 1).numpy())[..., :3]
    rgb = np.round(255 * ((1 - alpha) * img + alpha * colours)).astype(np.uint8)
    return "data:image/png;base64," + base64.b64encode(draw.png_bytes(rgb)).decode("ascii")


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>cnnlab demo: __TITLE__</title>
<style>
body { font-family: system-ui, sans-serif; margin: 0; background: #f4f5f7; color: #1d2330; }
main { max-width: 880px; margin: 0 auto; padding: 24px; }
#drop { border: 2px dashed #8a94a6; border-radius: 10px; padding: 36px; text-align: center; background: #fff; }
#drop.over { border-color: #3b6fc4; background: #eef3fc; }
#result { display: flex; gap: 24px; flex-wrap: wrap; margin-top: 20px; }
#overlay { width: 280px; image-rendering: pixelated; border-radius: 6px; }
table { border-collapse: collapse; } td { padding: 4px 10px; border-bottom: 1px solid #e3e6eb; }
.bar { background: #dfe6f1; width: 180px; height: 10px; border-radius: 5px; overflow: hidden; }
.bar i { display: block; height: 100%; background: #3b6fc4; }
#message { color: #9b1c1c; font-weight: 600; min-height: 1.4em; }
.muted { color: #5a6270; font-size: .9em; }
</style></head><body><main>
<h1>cnnlab demo</h1><p class="muted">__TITLE__ &middot; __NOTE__</p>
<div id="drop"><p>Drop an image here, or <input type="file" id="file" accept="image/*"></p></div>
<p id="message" role="alert"></p>
<div id="result" hidden>
  <div><img id="overlay" alt="Grad-CAM overlay"><p class="muted" id="cam"></p></div>
  <div><h2>Predicted: <span id="top1"></span></h2><table id="top"></table>
  <p class="muted" id="details"></p></div>
</div>
<p class="muted" id="status">ready</p>
</main>
<script>
const $ = (id) => document.getElementById(id);
async function send(file) {
  $("message").textContent = ""; $("status").textContent = "classifying " + file.name + " ...";
  try {
    const r = await fetch("predict", {method: "POST", body: file, headers: {"X-Filename": encodeURIComponent(file.name)}});
    const answer = await r.json();
    if (!r.ok) { $("result").hidden = true; $("message").textContent = answer.error; $("status").textContent = "error"; return; }
    $("top1").textContent = answer.top[0]["class"];
    const table = $("top"); table.replaceChildren();
    for (const t of answer.top) {
      const row = table.insertRow(); row.insertCell().textContent = t["class"];
      row.insertCell().textContent = (100 * t.probability).toFixed(1) + "%";
      const bar = document.createElement("div"); bar.className = "bar"; const fill = document.createElement("i");
      fill.style.width = (100 * t.probability).toFixed(1) + "%"; bar.appendChild(fill); row.insertCell().appendChild(bar);
    }
    $("overlay").src = answer.overlay;
    $("cam").textContent = "Grad-CAM for '" + answer.top[0]["class"] + "' at layer " + answer.layer;
    $("details").textContent = answer.converted + (answer.warnings.length ? " | warning: " + answer.warnings.join("; ") : "");
    $("result").hidden = false; $("status").textContent = "done: " + answer.image;
  } catch (e) { $("message").textContent = "no answer from the server: " + e; $("status").textContent = "error"; }
}
$("file").addEventListener("change", () => { if ($("file").files.length) send($("file").files[0]); });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files.length) send(e.dataTransfer.files[0]); });
</script></body></html>
"""


def page(demo: Demo) -> bytes:
    note = (f"probabilities calibrated (temperature {demo.card.temperature:.3f})" if demo.card.temperature != 1.0
            else "probabilities not calibrated (run `cnnlab calibrate`)")
    return PAGE.replace("__TITLE__", html.escape(demo.title)).replace("__NOTE__", html.escape(note)).encode()


def make_server(run: str | Path, host: str = "127.0.0.1", port: int = 8000, *, which: str = "best",
                top_k: int = 5, log=None) -> ThreadingHTTPServer:
    """A server for `run`'s demo page, bound but not yet serving (call `serve_forever()`); port 0 picks a free one.
    `log`: where request lines go (default: nowhere)."""
    demo = Demo(run, which, top_k)
    body = page(demo)

    class Handler(BaseHTTPRequestHandler):
        server_version = "cnnlab-serve"

        def log_message(self, fmt, *args):  # noqa: A002 - BaseHTTPRequestHandler's signature
            if log is not None:
                log(f"{self.address_string()} {fmt % args}")

        def _send(self, status: int, payload: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(payload)

        def _json(self, status: int, obj: dict) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json")

        def do_GET(self):  # noqa: N802 - http.server's naming
            if self.path in ("/", "/index.html"):
                self._send(200, body, "text/html; charset=utf-8")
            else:
                self._json(404, {"error": f"no page {self.path[:80]!r}; the demo is at /"})

        def do_POST(self):  # noqa: N802
            if self.path != "/predict":
                self._json(404, {"error": "post images to /predict"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0:
                self._json(400, {"error": "the request has no valid Content-Length"})
                return
            if length > MAX_UPLOAD:
                self.close_connection = True  # the body is not read
                self._json(413, {"error": f"the file has {length:,} bytes, more than the {MAX_UPLOAD:,} allowed; "
                                          "choose a smaller image"})
                return
            name = _filename(self.headers.get("X-Filename"))
            try:
                data = self.rfile.read(length) if length else b""
                self._json(200, demo.classify(data, name))
            except CnnlabError as e:
                self._json(400, {"error": str(e)})
            except Exception as e:  # noqa: BLE001 - the server keeps serving whatever one upload does
                traceback.print_exc(file=sys.stderr)
                self._json(500, {"error": f"the server failed on '{name}': {type(e).__name__}: {str(e)[:120]}"})

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as e:
        raise CnnlabError(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port "
                          "(0 picks a free one) or --host") from None
    server.daemon_threads = True
    return server


def _filename(header: str | None) -> str:
    name = unquote(header or "upload")
    return "".join(ch for ch in name if ch.isprintable())[:120] or "upload"
