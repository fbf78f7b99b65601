"""An HTTP receiver for the gateway's HTTP destination in end-to-end tests (stdlib only).

Usage: http_sink.py --dir DIR [--port P] [--fail-flag FILE]
Prints "READY <port>" once listening. Each POST is stored as DIR/<n>.headers (JSON object,
lower-case header names) and then DIR/<n>.body (the bytes as received), n counting from
00000001 in arrival order, both written to a temporary name and renamed, and answered 200.
While FILE exists every POST is answered 503 and not stored (a destination "down" for the
gateway's retries). Each connection has its own thread, as in any real server: an HTTP
client may open a new connection while its idle keep-alive one is still open, and a server
that serves one connection at a time would leave that request unanswered. Requests are
stored one at a time, under a lock: arrival order is the order of the files.
"""
import argparse
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--fail-flag")
    return p.parse_args()


def main():
    args = parse_args()
    os.makedirs(args.dir, exist_ok=True)
    count = [0]
    lock = threading.Lock()

    def write(name, data):
        tmp = os.path.join(args.dir, "." + name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, os.path.join(args.dir, name))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # The status line and headers go out in one write and the body in another: with
        # Nagle's algorithm the body waits for the client's delayed ACK (40 ms a request).
        disable_nagle_algorithm = True

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            if args.fail_flag and os.path.exists(args.fail_flag):
                self.answer(503, b"down for the test\n")
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            with lock:
                count[0] += 1
                stem = f"{count[0]:08d}"
                write(stem + ".headers", json.dumps(headers).encode())
                write(stem + ".body", body)
            self.answer(200, b"ok\n")

        def answer(self, status, text):
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        def log_message(self, *_):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"READY {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
