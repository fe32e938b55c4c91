"""A loopback HTTP file server for the download tests (127.0.0.1, port 0, a daemon thread)."""

import mimetypes
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FileServer:
    """Serves `files` {name: bytes} at http://127.0.0.1:<port>/<name> (with the Content-Type
    its extension names, if any); records each request's
    path; with `cut` set, sends the full Content-Length but only half of the body.

    A value may instead be a callable returning (headers, chunks): a hostile response, its
    headers as given (Content-Length only if listed) and its body the iterable `chunks`,
    written one by one until it ends or the client goes away."""

    def __init__(self, files):
        self.files, self.requests, self.cut = dict(files), [], False
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10

            def do_GET(self):
                server.requests.append(self.path)
                body = server.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                if callable(body):
                    self.send_chunks(*body())
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                content_type = mimetypes.guess_type(self.path)[0]
                if content_type:
                    self.send_header("Content-Type", content_type)
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if server.cut else body)
                self.close_connection = server.cut

            def send_chunks(self, headers, chunks):
                self.close_connection = True
                self.send_response(200)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                try:
                    for chunk in chunks:
                        self.wfile.write(chunk)
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading: what the bounded downloads do

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)
