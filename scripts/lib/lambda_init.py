"""Start-to-ready time of a Lambda binary, locally: a stand-in for Lambda's init phase.

Plays the Lambda Runtime API on loopback and measures, for each run, the time from
spawning the binary to its first `GET /2018-06-01/runtime/invocation/next` (the moment
the runtime is ready for an event). Prints median and p90 over the runs.

Usage: lambda_init.py BINARY RUNS   (environment passed through)
"""

import http.server
import os
import statistics
import subprocess
import sys
import threading
import time

ready = threading.Event()


class Runtime(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.endswith("/runtime/invocation/next"):
            ready.set()
            # Hold the request like Lambda does while no event is waiting.
            time.sleep(5)
        self.send_response(500)
        self.end_headers()

    def do_POST(self):
        self.send_response(202)
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    binary, runs = sys.argv[1], int(sys.argv[2])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Runtime)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = dict(os.environ, AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{server.server_address[1]}",
               AWS_LAMBDA_FUNCTION_NAME="bench", AWS_LAMBDA_FUNCTION_MEMORY_SIZE="1024",
               AWS_LAMBDA_FUNCTION_VERSION="1", AWS_LAMBDA_LOG_STREAM_NAME="bench",
               AWS_LAMBDA_LOG_GROUP_NAME="bench")
    times = []
    for _ in range(runs):
        ready.clear()
        start = time.perf_counter()
        proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ok = ready.wait(10)
        elapsed = time.perf_counter() - start
        proc.kill()
        proc.wait()
        if not ok:
            print(f"{binary}: never asked for an event", file=sys.stderr)
            return 1
        times.append(elapsed * 1000)
    times.sort()
    p90 = times[max(0, int(round(0.9 * len(times))) - 1)]
    print(f"{os.path.basename(binary)}: start-to-ready median {statistics.median(times):.1f} ms, "
          f"p90 {p90:.1f} ms, min {times[0]:.1f} ms over {runs} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
