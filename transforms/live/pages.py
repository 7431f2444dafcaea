"""The live jobs' browser pages, served over HTTP next to the WebSocket endpoint (no Beam).

``--http-port`` serves a fixed set of static files from ``transforms/live/web`` (plain HTML and
JavaScript, no build step, nothing from a CDN) and ``config.json``, which tells the page the
WebSocket port and what the job takes. Only those paths answer; anything else is a 404, and
only GET and HEAD are served. Like every live listener it binds 127.0.0.1 unless ``--host`` says
otherwise; browsers allow microphone and camera capture on ``http://127.0.0.1`` and
``http://localhost`` (secure contexts), elsewhere only over HTTPS.
"""

import http.server
import json
import os
import sys
import threading
from typing import Dict, Tuple

WEB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web")
PAGES = {"audio": "asr.html", "video": "video.html"}
FILES: Dict[str, Tuple[str, str]] = {  # URL path -> (file, content type)
    "/asr.html": ("asr.html", "text/html; charset=utf-8"),
    "/video.html": ("video.html", "text/html; charset=utf-8"),
    "/live.js": ("live.js", "text/javascript; charset=utf-8"),
    "/mic-worklet.js": ("mic-worklet.js", "text/javascript; charset=utf-8"),
    "/live.css": ("live.css", "text/css; charset=utf-8"),
}


class PageServer:
    """Serves the live pages on ``host:port`` in a daemon thread (port 0: any free port).

    Args:
        host, port: Listen address.
        ws_port: The WebSocket endpoint's port (the pages connect to it on the same host).
        media: ``"audio"`` (live-asr: ``/`` is the microphone page) or ``"video"`` (the camera page).
    """

    def __init__(self, host: str, port: int, ws_port: int, media: str):
        config = json.dumps({"ws_port": ws_port, "media": media}).encode("utf-8")
        index = PAGES[media]

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._serve(body=True)

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def _serve(self, body: bool) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/config.json":
                    data, kind = config, "application/json"
                else:
                    name, kind = FILES.get("/" + index if path == "/" else path, (None, ""))
                    if name is None:
                        self.send_error(404, "not one of the live pages")
                        return
                    with open(os.path.join(WEB_DIR, name), "rb") as handle:
                        data = handle.read()
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def log_message(self, *args) -> None:  # no access log on stderr
                pass

        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, name="mediabeam-live-pages", daemon=True).start()
        print(f"mediabeam live: page on http://{host}:{self.port}/ ({index})", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
