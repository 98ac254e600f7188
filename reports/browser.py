"""Open an HTML file in headless Chromium and report what a reader's browser would see.

Dependency-free: Chromium's DevTools protocol over a pipe (--remote-debugging-pipe:
the browser reads NUL-terminated JSON commands on fd 3 and writes replies and events
on fd 4), so no websocket client and no port. Collected: every <img> (loaded or not),
console errors, uncaught exceptions, browser log errors, and every network request
that is not the file itself or a data: URL (a self-contained page makes none).
"""
from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
         "--disable-dev-shm-usage", "--remote-debugging-pipe"]
IMAGES_JS = ("JSON.stringify(Array.from(document.images).map(i => ({src: i.src.slice(0, 40), "
             "complete: i.complete, width: i.naturalWidth, height: i.naturalHeight})))")


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


class _Pipe:
    def __init__(self, proc, w, r):
        self.proc, self.w, self.r = proc, w, r
        self.buf = b""
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method, params=None, session=None) -> int:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        return self.next_id

    def _read(self, deadline):
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            ready, _, _ = select.select([self.r], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(self.r, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"chromium closed the DevTools pipe (exit code {self.proc.poll()})")
                self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method, params=None, session=None, timeout=30.0) -> dict:
        mid = self.send(method, params, session)
        deadline = time.monotonic() + timeout
        while True:
            msg = self._read(deadline)
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_event(self, method, timeout=30.0) -> dict:
        deadline = time.monotonic() + timeout
        for e in self.events:
            if e["method"] == method:
                return e
        while True:
            msg = self._read(deadline)
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == method:
                    return msg

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        try:
            while True:
                msg = self._read(deadline)
                if "method" in msg:
                    self.events.append(msg)
        except TimeoutError:
            pass


def check_html(path, chromium: str | None = None, timeout: float = 60.0) -> dict:
    """Load `path` in headless Chromium; return {'images', 'console_errors', 'requests', 'ok'}.

    'ok' is True when there is at least one image, every image loaded (complete, non-zero size),
    nothing was logged as an error, nothing was thrown, and no request left the file."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; build the report first (`acmix-bench report DIR`)")
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no chromium found; install Debian's `chromium` (apt-get install chromium)")
    url = path.as_uri()
    cmd_r, cmd_w = os.pipe()  # we write commands, chromium reads them on fd 3
    out_r, out_w = os.pipe()  # chromium writes on fd 4, we read
    with tempfile.TemporaryDirectory(prefix="acmix-chromium-") as profile:
        proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{cmd_r} 4>&{out_w}', chromium, *FLAGS,
             f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(cmd_r, out_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, start_new_session=True)
        os.close(cmd_r)
        os.close(out_w)
        pipe = _Pipe(proc, cmd_w, out_r)
        try:
            target = pipe.call("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
            sid = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for dom in ("Runtime", "Log", "Network", "Page"):
                pipe.call(f"{dom}.enable", session=sid)
            pipe.events.clear()
            pipe.call("Page.navigate", {"url": url}, session=sid)
            pipe.wait_event("Page.loadEventFired", timeout=timeout)
            pipe.drain(0.5)  # late console messages
            res = pipe.call("Runtime.evaluate", {"expression": IMAGES_JS, "returnByValue": True}, session=sid)
            images = json.loads(res["result"]["value"])
            try:
                pipe.call("Browser.close", timeout=10)
            except (RuntimeError, TimeoutError):
                pass
        finally:
            os.close(cmd_w)
            os.close(out_r)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr:
                proc.stderr.close()
    errors, requests = [], []
    for e in pipe.events:
        m, p = e["method"], e.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append("console." + p["type"] + ": " + " ".join(str(a.get("value", a.get("description", "")))
                                                                  for a in p.get("args", [])))
        elif m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            errors.append("exception: " + str(d.get("exception", {}).get("description", d.get("text"))))
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            errors.append("log: " + p["entry"].get("text", "") + " " + p["entry"].get("url", ""))
        elif m == "Network.requestWillBeSent":
            u = p.get("request", {}).get("url", "")
            if not u.startswith("data:") and u != url:
                requests.append(u)
        elif m == "Network.loadingFailed":
            errors.append("network: " + p.get("errorText", "") + " " + p.get("requestId", ""))
    bad_images = [i for i in images if not (i["complete"] and i["width"] > 0 and i["height"] > 0)]
    return {"images": images, "bad_images": bad_images, "console_errors": errors, "requests": requests,
            "ok": bool(images) and not bad_images and not errors and not requests}
