"""What a user sees: ``autoprune search``'s live view, captured every 10 seconds.

The search runs in a pseudo-terminal of the given width, as in a user's terminal; every
``--every`` seconds the frame on screen (the text after the live view's last redraw) is printed.

    python benchmarks/live_view.py --budget 2m -- --model stories260K --sparsity 0.5
"""

from __future__ import annotations

import argparse
import os
import pty
import re
import select
import subprocess
import sys
import tempfile
import time

REDRAW = re.compile(r"(?:\x1b\[2K\x1b\[1A)+\x1b\[2K")  # rich.live moving back over its last frame
CONTROL = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]|\r")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", default="2m")
    ap.add_argument("--every", type=float, default=10.0)
    ap.add_argument("--columns", type=int, default=100)
    ap.add_argument("search_args", nargs="*", help="more `autoprune search` arguments (after --)")
    args = ap.parse_args()
    out = tempfile.mkdtemp(prefix="live-view-")
    cmd = [os.path.join(os.path.dirname(sys.executable), "autoprune"), "search", "--budget", args.budget,
           "--out", os.path.join(out, "run"), *(args.search_args or ["--model", "stories260K"])]
    master, slave = pty.openpty()
    os.set_blocking(master, False)
    env = {**os.environ, "COLUMNS": str(args.columns), "LINES": "40", "TERM": "xterm"}
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=out, close_fds=True)
    os.close(slave)
    buf, start, shots = "", time.monotonic(), 0
    while True:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                buf += os.read(master, 1 << 16).decode("utf-8", "replace")
            except OSError:  # the child closed the terminal
                pass
        elapsed = time.monotonic() - start
        if elapsed >= (shots + 1) * args.every or proc.poll() is not None:
            frame = CONTROL.sub("", REDRAW.split(buf)[-1]).rstrip()
            print(f"===== t = {elapsed:5.1f}s " + "=" * 40)
            print(frame)
            shots += 1
            if proc.poll() is not None:
                break
    print(f"exit code {proc.returncode}; run folder {out}/run")


if __name__ == "__main__":
    main()
