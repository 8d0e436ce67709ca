#!/usr/bin/env python3
"""Runs the publish benchmark: manifold against the skopeo route and flocken.

Called by bench/run.sh (which installs the tools, builds manifold and the
fixture); Python 3 standard library only. See bench/README.md.

For every run and every tool (in an order that rotates from run to run), one
fresh registry (new storage directory, `docker-registry serve` on a free
127.0.0.1 port) goes through three scenarios, each timed on its own:

* cold: the registry is empty; publish the base images (tags v1, latest).
* rerun: the registry holds that publish; a fresh runner publishes the same
  images again.
* changed: the registry holds that publish; publish the variant images where
  the top layer of each architecture differs (tags v2, latest).

Between scenarios the registry process is restarted (same storage, new port,
new log) and every client cache is new: podman's storage (`--root`,
`--runroot`), containers/image's blob-info cache (a private mount namespace
binds an empty directory over /var/lib/containers/cache), TMPDIR, and
XDG_CACHE_HOME (manifold's cache). The OS page cache is not dropped: the
fixture's layer files are read from memory by every tool alike.

Measured per scenario: wall time, peak RSS of the largest process of the
pipeline (GNU time's %M, through wait4), and what was pushed, read from the
registry's log: every completed blob upload (PUT .../blobs/uploads/...?digest=,
or a monolithic POST with ?digest=, answered 201) counts the size of that blob, even when the registry already had
it; manifests PUT are counted apart. A publish is "ok" when the tags it should
have moved resolve to an index with an amd64 and an arm64 manifest of 4 layers.
"""

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

INDEX_TYPES = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])
REPO_PATH = "bench/img"
SCENARIOS = [
    # (name, image suffix, first tag)
    ("cold", "", "v1"),
    ("rerun", "", "v1"),
    ("changed", "-v2", "v2"),
]
TOOLS = ("manifold", "skopeo", "flocken")
LABELS = {
    "manifold": "manifold",
    "skopeo": "skopeo route",
    "flocken": "flocken pipeline",
}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --- registry ---------------------------------------------------------------


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """One `docker-registry serve` process over a storage directory."""

    def __init__(self, binary, storage, workdir):
        self.binary, self.storage, self.workdir = binary, storage, workdir
        self.proc = None

    def start(self, name):
        self.port = free_port()
        self.log_path = os.path.join(self.workdir, "registry-%s.log" % name)
        config = os.path.join(self.workdir, "registry-%s.yml" % name)
        with open(config, "w") as f:
            # No blob descriptor cache: every scenario starts from storage alone.
            f.write(
                "version: 0.1\n"
                "log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: true\n"
                "storage:\n  filesystem:\n    rootdirectory: %s\n"
                "  maintenance:\n    uploadpurging:\n      enabled: false\n"
                "http:\n  addr: 127.0.0.1:%d\n" % (self.storage, self.port)
            )
        self.log_file = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [self.binary, "serve", config], stdout=self.log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit("docker-registry exited early, see %s" % self.log_path)
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/v2/" % self.port, timeout=1):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        self.stop()
        raise SystemExit("docker-registry did not answer on port %d, see %s" % (self.port, self.log_path))

    @property
    def host(self):
        return "127.0.0.1:%d" % self.port

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "log_file", None):
            self.log_file.close()
            self.log_file = None

    def cpu_seconds(self):
        """User + system CPU the registry process has used so far."""
        try:
            with open("/proc/%d/stat" % self.proc.pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError, AttributeError):
            return None

    def blob_size(self, hexdigest):
        path = os.path.join(self.storage, "docker/registry/v2/blobs/sha256", hexdigest[:2], hexdigest, "data")
        try:
            return os.path.getsize(path)
        except OSError:
            return None

    def stored_bytes(self):
        root = os.path.join(self.storage, "docker/registry/v2/blobs")
        total = 0
        for dirpath, _, files in os.walk(root):
            if "data" in files:
                total += os.path.getsize(os.path.join(dirpath, "data"))
        return total

    def pushed(self):
        """What the log says was uploaded: blobs (count, bytes), manifests."""
        done = re.compile(r'msg="response completed".*http\.request\.method=(\w+).*'
                          r'http\.request\.uri="?([^" ]+)"?.*http\.response\.status=(\d+)')
        blobs, blob_bytes, manifests, mounts, unknown = 0, 0, 0, 0, 0
        with open(self.log_path, errors="replace") as f:
            for line in f:
                m = done.search(line)
                if not m:
                    continue
                method, uri, status = m.group(1), m.group(2), m.group(3)
                # PUT closes a session; a POST with ?digest= is a monolithic upload.
                if method in ("PUT", "POST") and "/blobs/uploads/" in uri and "digest=" in uri and status == "201":
                    d = re.search(r"digest=sha256(?:%3A|:)([0-9a-f]{64})", uri)
                    if d:
                        blobs += 1
                        size = self.blob_size(d.group(1))
                        if size is None:
                            unknown += 1
                        else:
                            blob_bytes += size
                elif method == "POST" and "mount=" in uri and status == "201":
                    mounts += 1
                elif method == "PUT" and "/manifests/" in uri and status == "201":
                    manifests += 1
        return {"blob_uploads": blobs, "bytes": blob_bytes, "manifests_put": manifests,
                "mounts": mounts, "unknown_sizes": unknown}


def http_get(url, accept):
    req = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read(), r.headers


def verify(host, tags, layers=4):
    """'' when each tag is an index of amd64 + arm64 manifests with `layers` layers each, else why not."""
    base = "http://%s/v2/%s/manifests/" % (host, REPO_PATH)
    digests = set()
    for tag in tags:
        try:
            body, headers = http_get(base + tag, INDEX_TYPES)
            index = json.loads(body)
            digests.add(headers.get("Docker-Content-Digest"))
            arches = set()
            for m in index.get("manifests", []):
                plat = m.get("platform", {})
                if plat.get("os") != "linux":
                    continue  # attestation manifests and the like
                mbody, _ = http_get(base + m["digest"], INDEX_TYPES)
                got = len(json.loads(mbody).get("layers", []))
                if got != layers:
                    return "%s: %s has %d layers, not %d" % (tag, m["digest"], got, layers)
                arches.add(plat.get("architecture"))
            if arches != {"amd64", "arm64"}:
                return "%s: platforms %s" % (tag, sorted(a or "?" for a in arches))
        except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
            return "%s: %s" % (tag, e)
    if len(digests) != 1:
        return "tags point at different manifests: %s" % sorted(map(str, digests))
    return ""


def crane_tag(host, src, dst):
    """What `crane tag` does: GET the manifest, PUT the same bytes under a new tag."""
    base = "http://%s/v2/%s/manifests/" % (host, REPO_PATH)
    body, headers = http_get(base + src, INDEX_TYPES)
    req = urllib.request.Request(base + dst, data=body, method="PUT",
                                 headers={"Content-Type": headers.get("Content-Type")})
    with urllib.request.urlopen(req, timeout=30) as r:
        r.read()


# --- the pipelines -----------------------------------------------------------


def pipeline(tool, fixture, images, repo, tag, manifold, gzip_archives_ok, tarballs=False):
    """The bash script one publish runs, for `tool`: from the stream scripts,
    or with `tarballs` from buildLayeredImage-style tarball-<image>.tar.gz
    (make_fixture.py tarballs)."""
    q = shlex.quote
    if tarballs:
        inputs = [os.path.join(fixture, "tarball-%s.tar.gz" % i) for i in images]
    else:
        inputs = [os.path.join(fixture, "stream-" + i) for i in images]
    # A gzip archive for a skopeo or podman that cannot read one is
    # decompressed to a temp file first, as users (and a working podman,
    # inside) do; with pigz when there is one, as it is faster.
    unzip = "pigz -dc" if shutil.which("pigz") else "gzip -dc"
    # podman refuses a runroot longer than 50 characters: $RUNROOT is short.
    pod = 'podman --root "$STATE/podman/root" --runroot "$RUNROOT" --storage-driver vfs'
    if tool == "manifold":
        return "%s publish --repo %s --tag %s --tag latest %s" % (
            q(manifold), q(repo), q(tag), " ".join(q(i) for i in inputs))
    if tool == "skopeo":
        lines = []
        for img, src in zip(images, inputs):
            arch = img.split("-")[0]
            # skopeo cannot read a pipe (nor, this one, a gzip archive): the
            # tar is written to a file first.
            lines.append("%s %s > \"$TMPDIR/%s.tar\"" % (unzip if tarballs else "", q(src), arch))
            lines.append("skopeo copy -q --dest-tls-verify=false docker-archive:\"$TMPDIR/%s.tar\" docker://%s:%s-%s"
                         % (arch, repo, tag, arch))
        lines.append("%s manifest create bench-list >/dev/null" % pod)
        for img in images:
            arch = img.split("-")[0]
            lines.append("%s manifest add --tls-verify=false bench-list docker://%s:%s-%s >/dev/null"
                         % (pod, repo, tag, arch))
        lines.append("%s manifest push -q --all --tls-verify=false bench-list docker://%s:%s" % (pod, repo, tag))
        lines.append("skopeo copy -q --all --src-tls-verify=false --dest-tls-verify=false docker://%s:%s docker://%s:latest"
                     % (repo, tag, repo))
        return "\n".join(lines)
    if tool == "flocken":
        # flocken's generated docker-manifest script (src/docker-manifest/default.nix):
        # create, per stream `| gzip --fast`
        # to a file + `manifest add docker-archive:` (a tarball is added as
        # it is), inspect, push --all --format oci
        # to the first tag, `crane tag` for the others.
        # (podman 4.3 has no `manifest create --annotation`: flocken's two
        # annotations are left out.)
        lines = ["%s manifest create bench-list >/dev/null" % pod]
        for n, src in enumerate(inputs, 1):
            if tarballs:
                gz = q(src)
            else:
                gz = "\"$TMPDIR/image-stream-%d.tar.gz\"" % n
                lines.append("%s | gzip --fast > %s" % (q(src), gz))
            if gzip_archives_ok:
                lines.append("%s manifest add bench-list docker-archive:%s >/dev/null" % (pod, gz))
            else:
                # This podman cannot read gzip docker-archives (see README): do
                # what a working one does inside, decompress to a temp file.
                tar = "\"$TMPDIR/image-stream-%d.tar\"" % n
                lines.append("%s %s > %s" % (unzip, gz, tar))
                lines.append("%s manifest add bench-list docker-archive:%s >/dev/null" % (pod, tar))
        lines.append("%s manifest inspect bench-list >/dev/null" % pod)
        lines.append("%s manifest push -q --all --format oci --tls-verify=false bench-list docker://%s:%s"
                     % (pod, repo, tag))
        lines.append("python3 %s crane-tag %s %s latest" % (q(os.path.realpath(__file__)), repo.split("/")[0], tag))
        return "\n".join(lines)
    raise ValueError(tool)


def run_publish(script, state, env_extra, timeout):
    """Runs `script` in a private mount namespace; returns (rc, wall s, peak RSS KiB, stderr tail)."""
    for d in ("tmp", "cache", "xdg-cache", "podman"):
        os.makedirs(os.path.join(state, d), exist_ok=True)
    # Not a CI run: no GitHub context for manifold's automatic tags.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITHUB_") and k != "CI"}
    env.update({"STATE": state, "TMPDIR": os.path.join(state, "tmp"),
                "XDG_CACHE_HOME": os.path.join(state, "xdg-cache")})
    runroot = tempfile.mkdtemp(prefix="mfb-", dir="/tmp")
    env["RUNROOT"] = runroot
    env.update(env_extra)
    body = "set -euo pipefail\n" + script + "\n"
    # containers/image keeps a blob-info cache (uncompressed ↔ compressed
    # digests) in /var/lib/containers/cache for root; a fresh runner has none.
    inner = ('mkdir -p /var/lib/containers/cache && mount --bind "$STATE/cache" /var/lib/containers/cache '
             '&& exec bash -c %s' % shlex.quote(body))
    timefile = os.path.join(state, "time")
    cmd = ["/usr/bin/time", "-f", "%e %U %S %M", "-o", timefile, "unshare", "-m", "bash", "-c", inner]
    errpath = os.path.join(state, "stderr")
    with open(errpath, "w") as err:
        t0 = time.monotonic()
        try:
            rc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                timeout=timeout, cwd=state).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        wall = time.monotonic() - t0
    rss = cpu = None
    try:
        with open(timefile) as f:
            # The last line: `time` writes "Command exited with …" before it.
            _, user, system, rss = f.read().split("\n")[-2].split()
        rss, cpu = int(rss), float(user) + float(system)
    except (OSError, ValueError, IndexError):
        pass
    with open(errpath, errors="replace") as f:
        tail = f.read()[-2000:]
    shutil.rmtree(runroot, ignore_errors=True)
    return rc, wall, rss, cpu, tail


def timed_publish(registry, script, state, timeout, tag, layers, moved_away=None):
    """Runs one publish against the started `registry`, checks the tags it
    moved and stops the registry. Returns the measurements every scenario
    records: ok/error, wall time, peak RSS, CPU of the tool and the registry,
    blobs pushed, storage growth. `moved_away` is a context manager held
    around the publish alone (the nix2container rerun hides the store)."""
    before = registry.stored_bytes()
    reg_cpu = registry.cpu_seconds()
    with moved_away or contextlib.nullcontext():
        rc, wall, rss, cpu, tail = run_publish(script, state, {}, timeout)
    reg_cpu = cpu_delta(reg_cpu, registry.cpu_seconds())
    problem = "exit %s: %s" % (rc, tail.strip()[-600:]) if rc != 0 else verify(registry.host, [tag, "latest"], layers)
    pushed = registry.pushed()
    registry.stop()
    return {
        "ok": problem == "", "error": problem or None, "wall_s": round(wall, 3),
        "peak_rss_kib": rss, "cpu_s": cpu, "registry_cpu_s": reg_cpu,
        "pushed": pushed, "stored_new_bytes": registry.stored_bytes() - before,
    }


@contextlib.contextmanager
def renamed(path, away):
    """`path` renamed to `away` for the duration, then back."""
    os.rename(path, away)
    try:
        yield
    finally:
        os.rename(away, path)


def cpu_delta(before, after):
    return None if before is None or after is None else round(after - before, 2)


def gzip_archive_probe(workdir, fixture):
    """Whether this skopeo/podman reads a gzip docker-archive (Debian 12's does not)."""
    import gzip
    import io
    import tarfile
    path = os.path.join(workdir, "probe.tar.gz")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        layer = io.BytesIO()
        with tarfile.open(fileobj=layer, mode="w") as lt:
            lt.addfile(tarfile.TarInfo("empty"), io.BytesIO(b""))
        data = layer.getvalue()
        import hashlib
        sha = hashlib.sha256(data).hexdigest()
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": ["sha256:" + sha]}}).encode()
        csha = hashlib.sha256(config).hexdigest()
        manifest = json.dumps([{"Config": csha + ".json", "RepoTags": [], "Layers": [sha + "/layer.tar"]}]).encode()
        for name, b in ((sha + "/layer.tar", data), (csha + ".json", config), ("manifest.json", manifest)):
            ti = tarfile.TarInfo(name)
            ti.size = len(b)
            tar.addfile(ti, io.BytesIO(b))
    with open(path, "wb") as f:
        f.write(gzip.compress(buf.getvalue()))
    r = subprocess.run(["skopeo", "inspect", "--raw", "docker-archive:" + path],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.unlink(path)
    return r.returncode == 0


# --- driver -------------------------------------------------------------------


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(results, tools, scenarios=None):
    summary = {}
    for scen in scenarios or [x[0] for x in SCENARIOS]:
        rows = {}
        for tool in tools:
            rs = [r for r in results if r["tool"] == tool and r["scenario"] == scen]
            good = [r for r in rs if r["ok"]]
            rows[tool] = {
                "runs": len(rs),
                "ok": len(good),
                "median_s": median([r["wall_s"] for r in good]),
                "min_s": min([r["wall_s"] for r in good], default=None),
                "max_s": max([r["wall_s"] for r in good], default=None),
                "median_mb_pushed": median([r["pushed"]["bytes"] / 1e6 for r in good]),
                "median_blob_uploads": median([r["pushed"]["blob_uploads"] for r in good]),
                "median_peak_rss_mb": median([r["peak_rss_kib"] / 1024 if r["peak_rss_kib"] else None for r in good]),
                "median_cpu_s": median([r.get("cpu_s") for r in good]),
                "median_registry_cpu_s": median([r.get("registry_cpu_s") for r in good]),
            }
        ref = rows.get("skopeo", {}).get("median_s")
        for tool in tools:
            m = rows[tool]["median_s"]
            rows[tool]["ratio_vs_skopeo"] = (m / ref) if (m is not None and ref) else None
        summary[scen] = rows
    return summary


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def print_tables(summary, tools, runs, title="scenario", prec=".1f"):
    for scen in summary:
        print()
        print("%s: %s  (median of %d runs)" % (title, scen, runs))
        print("  %-17s %9s %11s %9s %10s %8s %10s %13s %5s" % (
            "tool", "median s", "min-max s", "vs skopeo", "MB pushed", "uploads", "peak RSS",
            "CPU s: tool+reg", "ok"))
        for tool in tools:
            r = summary[scen][tool]
            spread = "-" if r["min_s"] is None else "%s-%s" % (format(r["min_s"], prec), format(r["max_s"], prec))
            print("  %-17s %9s %11s %9s %10s %8s %10s %15s %5s" % (
                LABELS[tool], fmt(r["median_s"], prec), spread,
                "-" if r["ratio_vs_skopeo"] is None else "%.2fx" % r["ratio_vs_skopeo"],
                fmt(r["median_mb_pushed"], ".1f"), fmt(r["median_blob_uploads"], ".0f"),
                "-" if r["median_peak_rss_mb"] is None else "%.0f MB" % r["median_peak_rss_mb"],
                "%s+%s" % (fmt(r["median_cpu_s"], ".1f"), fmt(r["median_registry_cpu_s"], ".1f")),
                "%d/%d" % (r["ok"], r["runs"])))


# --- nix2container scenario ----------------------------------------------------

N2C_SCENARIOS = [
    # (name, first tag): rerun publishes the same images from a fresh runner
    ("cold", "v1"),
    ("rerun", "v1"),
]
N2C_TOOLS = ("manifold", "skopeo")
N2C_ARCHES = ("amd64", "arm64")


def n2c_pipeline(tool, n2c, repo, tag, manifold):
    """The script of one nix2container publish, for `tool`."""
    q = shlex.quote
    if tool == "manifold":
        inputs = " ".join(q("nix2container:" + os.path.join(n2c, "image-%s.json" % arch)) for arch in N2C_ARCHES)
        return "%s publish --repo %s --tag %s --tag latest %s" % (q(manifold), q(repo), q(tag), inputs)
    if tool == "skopeo":
        # Stand-in for nix2container's patched skopeo (`nix2container:` transport),
        # which Debian does not ship: the same layer tars, ready-made as one
        # docker-archive per architecture by the fixture (untimed), pushed with
        # stock skopeo and joined into an index by podman.
        pod = 'podman --root "$STATE/podman/root" --runroot "$RUNROOT" --storage-driver vfs'
        lines = []
        for arch in N2C_ARCHES:
            lines.append("skopeo copy -q --dest-tls-verify=false docker-archive:%s docker://%s:%s-%s"
                         % (q(os.path.join(n2c, "archive-%s.tar" % arch)), repo, tag, arch))
        lines.append("%s manifest create bench-list >/dev/null" % pod)
        for arch in N2C_ARCHES:
            lines.append("%s manifest add --tls-verify=false bench-list docker://%s:%s-%s >/dev/null"
                         % (pod, repo, tag, arch))
        lines.append("%s manifest push -q --all --tls-verify=false bench-list docker://%s:%s" % (pod, repo, tag))
        lines.append("skopeo copy -q --all --src-tls-verify=false --dest-tls-verify=false docker://%s:%s docker://%s:latest"
                     % (repo, tag, repo))
        return "\n".join(lines)
    raise ValueError(tool)


def run_n2c(a, tools, work, manifold):
    """cold + rerun of the nix2container images, per tool, fresh registry per
    tool. manifold's rerun runs with the fake store renamed away: it can only
    succeed by reading no layer bytes (and must upload no blob)."""
    n2c = os.path.realpath(a.n2c)
    with open(os.path.join(n2c, "fixture.json")) as f:
        fixture = json.load(f)
    store = fixture["store"]
    hidden = store + ".hidden"
    if os.path.exists(hidden) and not os.path.exists(store):
        os.rename(hidden, store)  # left over by an interrupted run
    results = []
    for run in range(1, a.n2c_runs + 1):
        k = (run - 1) % len(tools)
        for tool in tools[k:] + tools[:k]:
            session = tempfile.mkdtemp(prefix="n2c-%s-r%d-" % (tool, run), dir=work)
            registry = Registry(a.registry, os.path.join(session, "storage"), session)
            try:
                for scen, tag in N2C_SCENARIOS:
                    registry.start(scen)
                    state = os.path.join(session, scen)
                    repo = "%s/%s" % (registry.host, REPO_PATH)
                    script = n2c_pipeline(tool, n2c, repo, tag, manifold)
                    hide = tool == "manifold" and scen == "rerun"
                    res = {"run": run, "tool": tool, "scenario": scen, "store_hidden": hide}
                    res.update(timed_publish(registry, script, state, a.timeout, tag, 4,
                                             renamed(store, hidden) if hide else None))
                    pushed, wall, rss = res["pushed"], res["wall_s"], res["peak_rss_kib"]
                    if hide:
                        # The store was not there: a successful publish read no
                        # layer bytes; it must not have uploaded any blob either.
                        res["reads_no_layer_bytes"] = res["ok"] and pushed["blob_uploads"] == 0
                        if res["ok"] and pushed["blob_uploads"]:
                            res["ok"] = False
                            res["error"] = "rerun uploaded %d blobs" % pushed["blob_uploads"]
                    if hide and res["ok"] and shutil.which("strace"):
                        res["strace_store_accesses"] = n2c_strace_check(registry, session, n2c, tag, manifold, store, a.timeout)
                        if res["strace_store_accesses"]:
                            res["reads_no_layer_bytes"] = False
                            res["ok"] = False
                            res["error"] = "rerun touched the store %d times (strace)" % res["strace_store_accesses"]
                    results.append(res)
                    log("n2c run %d %-8s %-8s %6.2fs  %7.1f MB pushed in %d blobs  rss %s MB%s%s" % (
                        run, tool, scen, wall, pushed["bytes"] / 1e6, pushed["blob_uploads"],
                        "?" if rss is None else rss // 1024, "  (store hidden)" if hide else "",
                        "" if res["ok"] else "  FAILED: " + res["error"]))
                    shutil.rmtree(os.path.join(state, "tmp"), ignore_errors=True)
                    shutil.rmtree(os.path.join(state, "podman"), ignore_errors=True)
            finally:
                registry.stop()
                if not a.keep:
                    shutil.rmtree(session, ignore_errors=True)
    summary = summarize(results, tools, [x[0] for x in N2C_SCENARIOS])
    reruns = [r for r in results if r.get("store_hidden")]
    return {
        "runs": a.n2c_runs, "tools": tools,
        "fixture": {arch: {"layers": len(img["layers"]), "uncompressed_bytes": img["uncompressed_bytes"]}
                    for arch, img in fixture["images"].items()},
        "manifold_rerun_reads_no_layer_bytes": bool(reruns) and all(r["reads_no_layer_bytes"] for r in reruns),
        "summary": summary, "results": results,
    }


def n2c_strace_check(registry, session, n2c, tag, manifold, store, timeout):
    """Second proof, untimed: the same rerun with the store in place, under
    `strace -f -e trace=%file,read`; counts the file system calls naming a path
    under the store (open, stat, readlink, …). Returns that count (0 expected)."""
    registry.start("rerun-strace")
    try:
        state = os.path.join(session, "rerun-strace")
        trace = os.path.join(session, "rerun.strace")
        repo = "%s/%s" % (registry.host, REPO_PATH)
        script = "strace -f -qq -e trace=%%file -o %s %s" % (
            shlex.quote(trace), n2c_pipeline("manifold", n2c, repo, tag, manifold))
        rc, _, _, _, tail = run_publish(script, state, {}, timeout)
        if rc != 0:
            raise SystemExit("strace check of the nix2container rerun failed: exit %s: %s" % (rc, tail[-600:]))
        with open(trace, errors="replace") as f:
            lines = f.readlines()
        # The trace must show manifold opening its inputs, or it proves nothing.
        if not any("image-amd64.json" in line for line in lines):
            raise SystemExit("strace check: %s does not show image-amd64.json being read" % trace)
        hits = [line for line in lines if store in line]
        for line in hits[:5]:
            log("  store access: " + line.strip())
        return len(hits)
    finally:
        registry.stop()


def print_n2c(out):
    print()
    total = sum(x["uncompressed_bytes"] for x in out["fixture"].values())
    print("nix2container image, %.0f MB of layers over amd64 + arm64 (skopeo route: stock skopeo "
          "on ready-made docker-archives of the same layers)" % (total / 1e6))
    print_tables(out["summary"], out["tools"], out["runs"], title="nix2container scenario", prec=".2f")
    reruns = [r for r in out["results"] if r.get("store_hidden")]
    if reruns:
        print("  manifold rerun with the store renamed away: %d/%d succeeded with 0 blob uploads, "
              "wall %s s" % (sum(1 for r in reruns if r["reads_no_layer_bytes"]), len(reruns),
                             ", ".join("%.2f" % r["wall_s"] for r in reruns)))
        traced = [r["strace_store_accesses"] for r in reruns if "strace_store_accesses" in r]
        if traced:
            print("  same rerun with the store in place, under strace: %s file system calls on store paths"
                  % ", ".join(map(str, traced)))


def main():
    p = argparse.ArgumentParser(description="manifold publish benchmark (see bench/README.md)")
    sub = p.add_subparsers(dest="cmd")
    t = sub.add_parser("crane-tag", help="GET a manifest and PUT it under another tag")
    t.add_argument("host")
    t.add_argument("src")
    t.add_argument("dst")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--fixture", default="bench/.cache/fixture")
    p.add_argument("--work", default="bench/.cache/work")
    p.add_argument("--out", default="bench/.cache/results.json")
    p.add_argument("--manifold", default="target/release/manifold")
    p.add_argument("--registry", default=shutil.which("docker-registry") or "/usr/bin/docker-registry")
    p.add_argument("--tools", default=",".join(TOOLS))
    p.add_argument("--timeout", type=int, default=1800, help="seconds for one publish")
    p.add_argument("--keep", action="store_true", help="keep registry storage and logs")
    p.add_argument("--tarballs", action="store_true",
                   help="publish the fixture's tarball-<image>.tar.gz (make_fixture.py tarballs), not its streams")
    p.add_argument("--n2c", help="nix2container fixture (make_fixture.py n2c): also run that scenario")
    p.add_argument("--n2c-runs", type=int, help="runs of the nix2container scenario (default --runs)")
    p.add_argument("--n2c-only", action="store_true", help="only the nix2container scenario")
    a = p.parse_args()
    if a.cmd == "crane-tag":
        crane_tag(a.host, a.src, a.dst)
        return
    if a.n2c_only and not a.n2c:
        raise SystemExit("--n2c-only needs --n2c DIR")
    if a.n2c_runs is None:
        a.n2c_runs = a.runs
    tools = [x for x in a.tools.split(",") if x]
    for x in tools:
        if x not in TOOLS:
            raise SystemExit("unknown tool %r (choose from %s)" % (x, ", ".join(TOOLS)))
    if "manifold" in tools and not os.access(a.manifold, os.X_OK):
        raise SystemExit("%s is not an executable; build it (cargo build --release) or use --tools" % a.manifold)
    if os.geteuid() != 0:
        raise SystemExit("run as root: podman with private storage and the mount namespace need it")
    fixture = os.path.realpath(a.fixture)
    manifold = os.path.realpath(a.manifold)
    os.makedirs(a.work, exist_ok=True)
    work = os.path.realpath(a.work)
    results, out = [], {}
    if not a.n2c_only:
        gzip_ok = gzip_archive_probe(work, fixture)
        if not gzip_ok:
            log("note: this skopeo/podman cannot read gzip docker-archives; the flocken pipeline "
                "decompresses its .tar.gz to a temp file first, as a working podman does inside")
        with open(os.path.join(fixture, "images.json")) as f:
            layer_count = len(json.load(f)["images"]["amd64"]["layers"])
        results = []
        for run in range(1, a.runs + 1):
            k = (run - 1) % len(tools)
            order = tools[k:] + tools[:k]
            for tool in order:
                session = tempfile.mkdtemp(prefix="%s-r%d-" % (tool, run), dir=work)
                registry = Registry(a.registry, os.path.join(session, "storage"), session)
                try:
                    for scen, suffix, tag in SCENARIOS:
                        registry.start(scen)
                        state = os.path.join(session, scen)
                        repo = "%s/%s" % (registry.host, REPO_PATH)
                        images = ["amd64" + suffix, "arm64" + suffix]
                        script = pipeline(tool, fixture, images, repo, tag, manifold, gzip_ok, a.tarballs)
                        res = {"run": run, "tool": tool, "scenario": scen}
                        res.update(timed_publish(registry, script, state, a.timeout, tag, layer_count))
                        pushed, wall, rss, problem = res["pushed"], res["wall_s"], res["peak_rss_kib"], res["error"]
                        results.append(res)
                        log("run %d %-8s %-8s %6.1fs  %7.1f MB pushed in %d blobs  rss %s MB%s" % (
                            run, tool, scen, wall, pushed["bytes"] / 1e6, pushed["blob_uploads"],
                            "?" if rss is None else rss // 1024, "" if not problem else "  FAILED: " + problem))
                        shutil.rmtree(os.path.join(state, "tmp"), ignore_errors=True)
                        shutil.rmtree(os.path.join(state, "podman"), ignore_errors=True)
                finally:
                    registry.stop()
                    if not a.keep:
                        shutil.rmtree(session, ignore_errors=True)
        summary = summarize(results, tools)
        with open(os.path.join(a.fixture, "images.json")) as f:
            images = json.load(f)["images"]
        fixture_info = {
            name: {"layers": len(img["layers"]), "uncompressed_bytes": sum(l["size"] for l in img["layers"])}
            for name, img in images.items()
        }
        out = {
            "runs": a.runs, "tools": tools, "order": "rotated per run",
            "gzip_docker_archive_supported": gzip_ok,
            "inputs": "tarballs" if a.tarballs else "streams",
            "fixture": fixture_info,
            "versions": versions(manifold if "manifold" in tools else None),
            "summary": summary, "results": results,
        }
    n2c_out = None
    if a.n2c:
        n2c_out = run_n2c(a, [t for t in tools if t in N2C_TOOLS], work, manifold)
        n2c_out["versions"] = versions(manifold if "manifold" in tools else None)
        if a.n2c_only:
            try:  # keep the stream scenarios of an earlier run
                with open(a.out) as f:
                    out = json.load(f)
            except (OSError, ValueError):
                out = {}
        out["nix2container"] = n2c_out
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    if not a.n2c_only:
        print_tables(summary, tools, a.runs)
    if n2c_out:
        print_n2c(n2c_out)
    print()
    print("MB pushed: sizes of the blobs whose upload completed (registry log), re-uploads included")
    print("CPU s: user+system seconds of the publish (the tool with its children: stream scripts,")
    print("       podman, gzip) + of the registry process; (tool+reg)/wall near %d means every core"
          % (os.cpu_count() or 1))
    print("       was busy: the push is CPU-bound, and only less work makes it faster")
    print("results: %s" % a.out)
    failed = [r for r in results if not r["ok"]] + [r for r in (n2c_out or {}).get("results", []) if not r["ok"]]
    if failed:
        sys.exit(1)


def versions(manifold):
    def out(cmd):
        try:
            return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=30).stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            return None
    v = {"skopeo": out(["skopeo", "--version"]), "podman": out(["podman", "--version"]),
         "docker-registry": out(["docker-registry", "--version"]), "gzip": out(["gzip", "--version"])}
    if manifold:
        v["manifold"] = out([manifold, "--version"])
    return v


if __name__ == "__main__":
    main()
