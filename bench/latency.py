#!/usr/bin/env python3
"""bench/latency.py: what round trips cost a re-run of `manifold publish`.

On loopback a registry answers in well under a millisecond, so the main
benchmark (run.sh) cannot show how many round trips a publish waits for one
after another; against ghcr.io or Docker Hub each costs tens of
milliseconds. This script publishes the inputs once, straight to a fresh
local registry (127.0.0.1 only), then times re-runs from a fresh runner
(empty XDG_CACHE_HOME) through a local proxy that holds every chunk it
forwards for half the round-trip time in each direction (pipelined: the
bandwidth is not capped), for each --rtt-ms. No layer changed, so a re-run reads what the tags point at,
checks the layers and puts what is new: its time is mostly round trips.
Each timed run is a new commit by default (its own `--created`, so a new
index over the same manifests, as CI builds a commit that leaves the image
unchanged); with --commit same every run has the first run's `created`, so
nothing is new and only the reads remain. With --cold every timed publish goes to a repository
of its own instead, so everything is uploaded: the round trips a cold push
waits for, besides the bytes. With --compare PATH a second manifold build
runs alternately with the first, for before/after figures.

    python3 bench/latency.py [--manifold PATH] [--compare PATH] [--rtt-ms 0,20,50]
                             [--runs 3] [--cold] [--commit new|same] [INPUT ...]

INPUTs are manifold's (`linux/amd64=PATH`); the default is the nix2container
fixture (bench/.cache/n2c, built by `bench/run.sh --n2c-only`), whose
re-run reads no layer bytes. The proxy models latency per message, not
bandwidth. manifold runs at nice 10 (since 2026-11-29 17:45): the proxy
and the registry stand for a remote machine, and at equal priority a
CPU-busy push slowed the proxy's Python, and so every round trip.
"""

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import Registry, free_port  # noqa: E402


class DelayProxy:
    """127.0.0.1:<port> → upstream, each chunk forwarded after `delay` s."""

    def __init__(self, upstream_port, delay):
        self.upstream_port, self.delay = upstream_port, delay
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        if not ready.wait(10):
            raise SystemExit("the delay proxy did not start")

    def _run(self, ready):
        asyncio.set_event_loop(self.loop)

        async def pipe(reader, writer):
            # Each chunk leaves `delay` after it arrived, while later ones are
            # read on: latency without capping the bandwidth.
            queue = asyncio.Queue()

            async def read():
                try:
                    while True:
                        data = await reader.read(1 << 18)
                        await queue.put((time.monotonic() + self.delay, data))
                        if not data:
                            break
                except (ConnectionError, OSError):
                    await queue.put((0, b""))

            reading = asyncio.ensure_future(read())
            try:
                while True:
                    due, data = await queue.get()
                    if not data:
                        break
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                reading.cancel()
                writer.close()

        async def handle(client_r, client_w):
            try:
                up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            except OSError:
                client_w.close()
                return
            try:
                await asyncio.gather(pipe(client_r, up_w), pipe(up_r, client_w))
            except asyncio.CancelledError:
                pass  # the proxy stops

        async def serve():
            server = await asyncio.start_server(handle, "127.0.0.1", self.port)
            ready.set()
            async with server:
                await server.serve_forever()

        try:
            self.loop.run_until_complete(serve())
        except (RuntimeError, asyncio.CancelledError):
            pass  # stopped

    def stop(self):
        async def cancel_all():
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(5)
        self.thread.join(5)


# The commit time of every run with --commit same, and of the first one.
FIRST_CREATED = 1_700_000_000


def publish(manifold, host, inputs, work, timed, repo="latency/app", created=FIRST_CREATED):
    """One publish with a fresh client cache, `created` as its commit time
    (seconds since 1970); returns wall seconds."""
    cache = os.path.join(work, "xdg")
    shutil.rmtree(cache, ignore_errors=True)
    env = dict(os.environ, XDG_CACHE_HOME=cache, TMPDIR=work)
    env = {k: v for k, v in env.items() if not k.startswith("GITHUB_") and k != "CI"}
    cmd = [manifold, "publish", "-q", "--no-auto-tags", "--repo", host + "/" + repo,
           "--tag", "v1", "--tag", "latest", "--created", str(created)] + inputs
    start = time.monotonic()
    # manifold at nice 10: the registry and the proxy stand for a remote
    # machine, whose CPU a push does not share (at equal priority the
    # proxy's Python slowed every round trip of a CPU-busy push).
    proc = subprocess.run(cmd, env=env, cwd=work, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.nice(10))
    wall = time.monotonic() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-2000:])
        raise SystemExit("%s publish failed%s" % (manifold, " (timed)" if timed else ""))
    return wall


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifold", default=os.path.join(here, "..", "target", "release", "manifold"))
    p.add_argument("--compare", metavar="PATH", help="a second manifold build, run alternately")
    p.add_argument("--rtt-ms", default="0,20,50")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--cold", action="store_true",
                   help="time cold pushes, each to a new repository, not re-runs")
    p.add_argument("--commit", choices=("new", "same"), default="new",
                   help="each re-run a new commit over unchanged layers (a new index), "
                        "or the same commit again (default: new)")
    p.add_argument("inputs", nargs="*")
    a = p.parse_args()
    binaries = [os.path.abspath(a.manifold)] + ([os.path.abspath(a.compare)] if a.compare else [])
    for b in binaries:
        if not os.access(b, os.X_OK):
            raise SystemExit("no manifold binary at %s: run `cargo build --release` first, "
                             "or pass --manifold PATH" % b)
    inputs = a.inputs
    if not inputs:
        n2c = os.path.join(here, ".cache", "n2c")
        images = [os.path.join(n2c, "image-%s.json" % arch) for arch in ("amd64", "arm64")]
        if not all(os.path.isfile(i) for i in images):
            raise SystemExit("no inputs given and no nix2container fixture in %s "
                             "(build it with `bench/run.sh --n2c-only`)" % n2c)
        inputs = ["linux/amd64=" + images[0], "linux/arm64=" + images[1]]
    try:
        rtts = [float(x) for x in a.rtt_ms.split(",") if x.strip()]
    except ValueError:
        raise SystemExit("--rtt-ms: a comma-separated list of milliseconds, as in 0,20,50")
    registry_bin = shutil.which("docker-registry")
    if not registry_bin:
        raise SystemExit("docker-registry is not installed (apt-get install docker-registry)")

    work = tempfile.mkdtemp(prefix="manifold-latency-")
    registry = Registry(registry_bin, os.path.join(work, "storage"), work)
    try:
        registry.start("latency")
        if a.cold:
            print("cold push to a new repository, tags v1 and latest, %d runs each "
                  "(median, min-max)" % a.runs)
        else:
            publish(binaries[0], registry.host, inputs, work, timed=False)
            print("re-run from a fresh runner, %s, tags v1 and latest, %d runs each "
                  "(median, min-max)" % ("a new commit over unchanged layers" if a.commit == "new"
                                         else "the same commit", a.runs))
        repos = ("latency/cold%d" % n for n in range(1_000_000))
        commits = iter(range(FIRST_CREATED + 1, FIRST_CREATED + 1_000_000))
        print("%-8s %s" % ("RTT", "  ".join("%-28s" % os.path.basename(b) for b in binaries)))
        for rtt in rtts:
            proxy = DelayProxy(registry.port, rtt / 2000.0) if rtt > 0 else None
            host = "127.0.0.1:%d" % proxy.port if proxy else registry.host
            try:
                walls = {b: [] for b in binaries}
                for _ in range(a.runs):
                    for b in binaries:
                        repo = next(repos) if a.cold else "latency/app"
                        created = next(commits) if a.commit == "new" else FIRST_CREATED
                        walls[b].append(publish(b, host, inputs, work, timed=True, repo=repo,
                                                created=created))
            finally:
                if proxy:
                    proxy.stop()
            print("%-8s %s" % ("%g ms" % rtt, "  ".join(
                "%-28s" % ("%.2f s (%.2f-%.2f)" % (statistics.median(w), min(w), max(w)))
                for w in (walls[b] for b in binaries))))
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
