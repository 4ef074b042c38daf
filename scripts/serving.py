"""The test scripts' one way to wait for a server process they started (`gradcam-serve serve
--bind 127.0.0.1:0`): read the URL from its first line, then poll GET /ready. Standard library
only, so that every venv can import it (the scripts run as `python scripts/NAME.py`, which puts
scripts/ on the path). scripts/lib/common.sh's server_url is the shell scripts' twin.
"""
import time
import urllib.request

# A 2-core machine shared with other jobs: warm-up has been seen to take tens of seconds.
READY_WITHIN = 120


class NotServing(RuntimeError):
    """The server did not come up: what was seen instead is in the message."""


def wait_until_serving(proc, what="the server", ready_within=READY_WITHIN):
    """The URL from `proc`'s first stdout line (`listening on URL`), once its GET /ready answers
    200. `proc` is a subprocess.Popen with stdout piped (text or bytes). Raises NotServing when
    the first line is something else, the process exits, or it is not ready within
    `ready_within` seconds: conditions with a bound, never a fixed sleep."""
    line = proc.stdout.readline()
    if isinstance(line, bytes):
        line = line.decode(errors="replace")
    line = line.strip()
    if not line.startswith("listening on "):
        proc.poll()
        raise NotServing(f"{what} did not start: first line {line!r}, exit status {proc.returncode}")
    url = line.removeprefix("listening on ")
    deadline = time.monotonic() + ready_within
    while True:
        try:
            with urllib.request.urlopen(url + "/ready", timeout=2) as r:
                if r.status == 200:
                    return url
        except OSError:  # not listening yet, or 503 while warming up (HTTPError is one)
            pass
        if proc.poll() is not None:
            raise NotServing(f"{what} at {url} exited with status {proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise NotServing(f"{what} at {url} was not ready within {ready_within} s")
        time.sleep(0.05)
