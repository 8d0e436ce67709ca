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
  the top layer of each architecture differs (tags v2, latest). With --image
  (the user's own images) it needs --changed-image, and is skipped without.

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
have moved resolve to one index holding exactly the platforms of the inputs,
each with as many layers as its input; the inputs (fixture or --image) are
read once beforehand, untimed, to know both.
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
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib

INDEX_TYPES = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])
REPO_PATH = "bench/img"
SCENARIOS = [
    # (name, first tag, images: the base ones or their changed variants)
    ("cold", "v1", "base"),
    ("rerun", "v1", "base"),
    ("changed", "v2", "changed"),
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


def verify(host, tags, expected):
    """'' when each tag resolves to one index holding exactly the platforms of
    `expected` ({platform_key: layer count}), each with that many layers, else
    why not. Entries of os "unknown" (attestations) are left out; a lone image
    manifest counts as an index of one (its platform read from its config)."""
    base = "http://%s/v2/%s/manifests/" % (host, REPO_PATH)
    want = ", ".join(sorted("/".join(x for x in k if x) for k in expected))
    digests = set()
    for tag in tags:
        try:
            body, headers = http_get(base + tag, INDEX_TYPES)
            doc = json.loads(body)
            digests.add(headers.get("Docker-Content-Digest"))
            if "manifests" in doc:
                entries = [(m.get("platform", {}), m["digest"]) for m in doc["manifests"]]
            else:
                config, _ = http_get("http://%s/v2/%s/blobs/%s" % (host, REPO_PATH, doc["config"]["digest"]), "*/*")
                entries = [(json.loads(config), tag)]
            found = set()
            for plat, digest in entries:
                if plat.get("os") == "unknown":
                    continue
                key = platform_key(plat)
                name = "/".join(x for x in key if x)
                if key not in expected or key in found:
                    return "%s: %s %s (expected %s)" % (
                        tag, "unexpected platform" if key not in expected else "twice", name, want)
                found.add(key)
                mbody, _ = http_get(base + digest, INDEX_TYPES)
                got = len(json.loads(mbody).get("layers", []))
                if got != expected[key]:
                    return "%s: %s (%s) has %d layers, not %d" % (tag, name, digest, got, expected[key])
            if found != set(expected):
                return "%s: platforms %s, expected %s" % (
                    tag, ", ".join(sorted("/".join(x for x in k if x) for k in found)) or "none", want)
        except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError, AttributeError) as e:
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


# --- the inputs ----------------------------------------------------------------

# Members kept in memory while an archive goes by: streamLayeredImage writes
# manifest.json last, so the config it names is only known at the end; every
# `*.json` is kept, and any other small member (docker save >= 25 names its
# config `blobs/sha256/<hex>`). Layers are bigger and only their size is kept.
SMALL_MEMBER = 1 << 20


def input_kind(path):
    """'tar.gz' by gzip's magic bytes (a Nix result link has no extension),
    'stream' for an executable not named as a tar, else 'tar'."""
    if not os.path.isfile(path):
        raise SystemExit("image %s: not a file" % path)
    with open(path, "rb") as f:
        if f.read(2) == b"\x1f\x8b":
            return "tar.gz"
    if os.access(path, os.X_OK) and not path.endswith((".tar", ".tar.gz", ".tgz")):
        return "stream"
    return "tar"


def inspect_image(path):
    """Reads the image at `path` once, untimed, the way the pipelines will
    (a stream is run, a .tar.gz inflated on the fly). Returns its kind,
    platform, layer count and uncompressed layer bytes, from manifest.json
    (its first image) and the config that names."""
    kind = input_kind(path)
    small, sizes, links = {}, {}, {}
    proc = errf = None
    problem = None
    try:
        if kind == "stream":
            errf = tempfile.TemporaryFile()
            proc = subprocess.Popen([path], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errf)
            src = proc.stdout
        else:
            src = open(path, "rb")
        with src, tarfile.open(fileobj=src, mode="r|gz" if kind == "tar.gz" else "r|") as tar:
            for m in tar:
                name = os.path.normpath(m.name)
                sizes[name] = m.size
                if m.issym():
                    links[name] = os.path.normpath(os.path.join(os.path.dirname(name), m.linkname))
                elif m.islnk():
                    links[name] = os.path.normpath(m.linkname)
                elif m.isfile() and (name.endswith(".json") or m.size <= SMALL_MEMBER):
                    small[name] = tar.extractfile(m).read()
            if proc:
                while src.read(1 << 20):  # the stream's padding after the tar's end
                    pass
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        problem = "%s: %s" % (type(e).__name__, e)
    finally:
        if proc:
            if problem:
                proc.kill()
            rc = proc.wait()
            errf.seek(0)
            tail = errf.read().decode(errors="replace").strip()[-600:]
            errf.close()
            if rc != 0 and not problem:
                problem = "the stream exited with %s: %s" % (rc, tail)
    what = "image %s (%s)" % (path, kind)
    if problem:
        raise SystemExit("%s is not a readable docker-archive: %s\n(--image takes a streamLayeredImage "
                         "script or a docker-archive, .tar or .tar.gz)" % (what, problem))
    try:
        manifest = json.loads(small["manifest.json"])
    except KeyError:
        raise SystemExit("%s has no manifest.json: it is not a docker-archive" % what)
    except ValueError as e:
        raise SystemExit("%s: manifest.json is not JSON: %s" % (what, e))
    if not isinstance(manifest, list) or not manifest or not isinstance(manifest[0], dict):
        raise SystemExit("%s: manifest.json is not a list of images" % what)
    if len(manifest) > 1:
        log("note: %s holds %d images; the first is published (…:@0)" % (what, len(manifest)))
    entry = manifest[0]
    config_name = os.path.normpath(str(entry.get("Config")))
    try:
        config = json.loads(small[config_name])
    except KeyError:
        raise SystemExit("%s: the config %s named by manifest.json is not in the archive" % (what, config_name))
    except ValueError as e:
        raise SystemExit("%s: the config %s is not JSON: %s" % (what, config_name, e))
    platform = {k: config.get(k) for k in ("os", "architecture", "variant") if config.get(k)}
    if "os" not in platform or "architecture" not in platform:
        raise SystemExit("%s: the config %s names no os or architecture" % (what, config_name))
    layer_bytes = 0
    for layer in entry.get("Layers") or []:
        name = os.path.normpath(layer)
        for _ in range(8):  # docker save links a repeated layer to its first copy
            if name not in links:
                break
            name = links[name]
        if name not in sizes:
            raise SystemExit("%s: layer %s named by manifest.json is not in the archive" % (what, layer))
        layer_bytes += sizes[name]
    return {"path": path, "kind": kind, "platform": platform, "layers": len(entry.get("Layers") or []),
            "uncompressed_bytes": layer_bytes, "images_in_archive": len(manifest)}


def platform_key(platform):
    """What an index tells platforms apart by: os, architecture, variant. arm64's
    v8 is its only variant, which containerd and containers/image add or
    drop at will: it compares as none."""
    variant = platform.get("variant") or ""
    if platform.get("architecture") == "arm64" and variant == "v8":
        variant = ""
    return (platform.get("os") or "", platform.get("architecture") or "", variant)


def platform_name(platform):
    return "/".join(platform[k] for k in ("os", "architecture", "variant") if platform.get(k))


def tag_suffix(platform):
    """The per-image tag of the skopeo route: T-amd64, T-arm64-v8, os first
    when not linux; unique, as two inputs never share a platform."""
    parts = ([] if platform["os"] == "linux" else [platform["os"]]) + [platform["architecture"]]
    parts += [platform["variant"]] if platform.get("variant") else []
    return re.sub(r"[^A-Za-z0-9_.-]", "_", "-".join(parts))


def expected_platforms(images):
    """{platform_key: layer count}: what verify() wants the index to hold."""
    return {platform_key(i["platform"]): i["layers"] for i in images}


def check_images(base, changed):
    """Refuses what one index cannot hold: two images of one platform; and a
    changed image that is not the same platform as its base image."""
    for images in (base, changed or []):
        seen = {}
        for i in images:
            key = platform_key(i["platform"])
            if key in seen:
                raise SystemExit("images %s and %s are both %s: an index holds one image per platform"
                                 % (seen[key], i["path"], platform_name(i["platform"])))
            seen[key] = i["path"]
    for b, c in zip(base, changed or []):
        if platform_key(b["platform"]) != platform_key(c["platform"]):
            raise SystemExit("changed image %s is %s, but its image %s is %s (give --changed-image in "
                             "the order of --image)" % (c["path"], platform_name(c["platform"]),
                                                         b["path"], platform_name(b["platform"])))


def describe(images):
    """One line's worth: PATH (kind, platform, N layers, MB), ..."""
    def shown(path):
        rel = os.path.relpath(path)
        return path if rel.startswith("..") else rel
    return ", ".join("%s (%s, %s, %d layers, %.0f MB)" % (
        shown(i["path"]), i["kind"], platform_name(i["platform"]), i["layers"], i["uncompressed_bytes"] / 1e6)
        for i in images)


def image_record(i):
    """An inspected image as results.json records it."""
    r = {k: i[k] for k in ("path", "kind", "platform", "layers", "uncompressed_bytes")}
    if os.path.realpath(i["path"]) != i["path"]:
        r["resolved"] = os.path.realpath(i["path"])  # a Nix result link: which store path it was
    if i["images_in_archive"] > 1:
        r["images_in_archive"] = i["images_in_archive"]
    return r


# --- the pipelines -----------------------------------------------------------


def pipeline(tool, inputs, repo, tag, manifold, gzip_archives_ok):
    """The bash script one publish runs, for `tool`, over `inputs` (from
    inspect_image: path, kind stream, tar or tar.gz, platform): the fixture's
    stream scripts, its buildLayeredImage-style tarballs (make_fixture.py
    tarballs) or the user's --image files alike."""
    q = shlex.quote
    # A gzip archive for a skopeo or podman that cannot read one is
    # decompressed to a temp file first, as users (and a working podman,
    # inside) do; with pigz when there is one, as it is faster.
    unzip = "pigz -dc" if shutil.which("pigz") else "gzip -dc"
    # podman refuses a runroot longer than 50 characters: $RUNROOT is short.
    pod = 'podman --root "$STATE/podman/root" --runroot "$RUNROOT" --storage-driver vfs'

    def pick(i):
        # Of an archive of several images, the first one (inspect_image's).
        return ":@0" if i["images_in_archive"] > 1 else ""

    if tool == "manifold":
        # manifold reads streams, .tar and .tar.gz itself, telling them apart
        # by content; a choice of image needs the kind named.
        args = [("archive:" + i["path"] + pick(i)) if pick(i) and i["kind"] != "stream" else i["path"]
                for i in inputs]
        return "%s publish --repo %s --tag %s --tag latest %s" % (
            q(manifold), q(repo), q(tag), " ".join(q(x) for x in args))
    if tool == "skopeo":
        lines = []
        for i in inputs:
            arch = tag_suffix(i["platform"])
            if i["kind"] == "tar":
                tar = q(i["path"])
            else:
                # skopeo cannot read a pipe (nor, this one, a gzip archive): the
                # tar is written to a file first.
                tar = "\"$TMPDIR/%s.tar\"" % arch
                lines.append("%s %s > %s" % (unzip if i["kind"] == "tar.gz" else "", q(i["path"]), tar))
            lines.append("skopeo copy -q --dest-tls-verify=false docker-archive:%s%s docker://%s:%s-%s"
                         % (tar, pick(i), repo, tag, arch))
        lines.append("%s manifest create bench-list >/dev/null" % pod)
        for i in inputs:
            lines.append("%s manifest add --tls-verify=false bench-list docker://%s:%s-%s >/dev/null"
                         % (pod, repo, tag, tag_suffix(i["platform"])))
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
        for n, i in enumerate(inputs, 1):
            if i["kind"] == "tar":
                # An uncompressed archive (buildImage) is added as it is too.
                lines.append("%s manifest add bench-list docker-archive:%s%s >/dev/null" % (pod, q(i["path"]), pick(i)))
                continue
            if i["kind"] == "tar.gz":
                gz = q(i["path"])
            else:
                gz = "\"$TMPDIR/image-stream-%d.tar.gz\"" % n
                lines.append("%s | gzip --fast > %s" % (q(i["path"]), gz))
            if gzip_archives_ok:
                lines.append("%s manifest add bench-list docker-archive:%s%s >/dev/null" % (pod, gz, pick(i)))
            else:
                # This podman cannot read gzip docker-archives (see README): do
                # what a working one does inside, decompress to a temp file.
                tar = "\"$TMPDIR/image-stream-%d.tar\"" % n
                lines.append("%s %s > %s" % (unzip, gz, tar))
                lines.append("%s manifest add bench-list docker-archive:%s%s >/dev/null" % (pod, tar, pick(i)))
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


def timed_publish(registry, script, state, timeout, tag, expected, moved_away=None):
    """Runs one publish against the started `registry`, checks the tags it
    moved (verify: `expected` platforms and layer counts) and stops the
    registry. Returns the measurements every scenario
    records: ok/error, wall time, peak RSS, CPU of the tool and the registry,
    blobs pushed, storage growth. `moved_away` is a context manager held
    around the publish alone (the nix2container rerun hides the store)."""
    before = registry.stored_bytes()
    reg_cpu = registry.cpu_seconds()
    with moved_away or contextlib.nullcontext():
        rc, wall, rss, cpu, tail = run_publish(script, state, {}, timeout)
    reg_cpu = cpu_delta(reg_cpu, registry.cpu_seconds())
    problem = "exit %s: %s" % (rc, tail.strip()[-600:]) if rc != 0 else verify(registry.host, [tag, "latest"], expected)
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
    expected = {platform_key({"os": "linux", "architecture": arch}): len(img["layers"])
                for arch, img in fixture["images"].items()}
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
                    res.update(timed_publish(registry, script, state, a.timeout, tag, expected,
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
    p.add_argument("--image", action="append", default=[],
                   help="your own image, one per platform (stream script, .tar or .tar.gz docker-archive), "
                        "published instead of the fixture; repeat it")
    p.add_argument("--changed-image", action="append", default=[],
                   help="the variant of each --image (same count and order) for the changed scenario, "
                        "which is skipped without them")
    a = p.parse_args()
    if a.cmd == "crane-tag":
        crane_tag(a.host, a.src, a.dst)
        return
    if a.n2c_only and not a.n2c:
        raise SystemExit("--n2c-only needs --n2c DIR")
    if a.image and (a.tarballs or a.n2c_only):
        raise SystemExit("--image cannot be combined with %s" % ("--tarballs" if a.tarballs else "--n2c-only"))
    if a.changed_image and len(a.changed_image) != len(a.image):
        raise SystemExit("%d --changed-image for %d --image: give one variant per image, in the same order"
                         % (len(a.changed_image), len(a.image)))
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
        # The inputs, read once (untimed) for their platforms and layer
        # counts, which verify() checks every publish against: the user's
        # images, or the fixture's streams or tarballs the same way.
        if a.image:
            paths = {"base": [os.path.abspath(x) for x in a.image],
                     "changed": [os.path.abspath(x) for x in a.changed_image]}
        else:
            name = "tarball-%s.tar.gz" if a.tarballs else "stream-%s"
            paths = {"base": [os.path.join(fixture, name % x) for x in ("amd64", "arm64")],
                     "changed": [os.path.join(fixture, name % x) for x in ("amd64-v2", "arm64-v2")]}
        inputs = {role: [] for role in paths}
        for role, ps in paths.items():
            for x in ps:
                log("inspecting %s" % x)
                inputs[role].append(inspect_image(x))
        check_images(inputs["base"], inputs["changed"])
        scenarios = [x for x in SCENARIOS if inputs[x[2]]]
        if not inputs["changed"]:
            log("note: no --changed-image: the changed scenario is skipped")
        gzip_ok = gzip_archive_probe(work, fixture)
        if not gzip_ok:
            log("note: this skopeo/podman cannot read gzip docker-archives; the flocken pipeline "
                "decompresses its .tar.gz to a temp file first, as a working podman does inside")
        results = []
        for run in range(1, a.runs + 1):
            k = (run - 1) % len(tools)
            order = tools[k:] + tools[:k]
            for tool in order:
                session = tempfile.mkdtemp(prefix="%s-r%d-" % (tool, run), dir=work)
                registry = Registry(a.registry, os.path.join(session, "storage"), session)
                try:
                    for scen, tag, role in scenarios:
                        registry.start(scen)
                        state = os.path.join(session, scen)
                        repo = "%s/%s" % (registry.host, REPO_PATH)
                        script = pipeline(tool, inputs[role], repo, tag, manifold, gzip_ok)
                        res = {"run": run, "tool": tool, "scenario": scen}
                        res.update(timed_publish(registry, script, state, a.timeout, tag,
                                                 expected_platforms(inputs[role])))
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
        summary = summarize(results, tools, [x[0] for x in scenarios])
        out = {
            "runs": a.runs, "tools": tools, "order": "rotated per run",
            "gzip_docker_archive_supported": gzip_ok,
            "inputs": "images" if a.image else "tarballs" if a.tarballs else "streams",
            "images": {role: [image_record(i) for i in xs] for role, xs in inputs.items()},
        }
        if not a.image:
            with open(os.path.join(fixture, "images.json")) as f:
                images = json.load(f)["images"]
            out["fixture"] = {
                name: {"layers": len(img["layers"]), "uncompressed_bytes": sum(l["size"] for l in img["layers"])}
                for name, img in images.items()
            }
        out.update({"versions": versions(manifold if "manifold" in tools else None),
                    "summary": summary, "results": results})
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
        print("images: " + describe(inputs["base"]))
        if inputs["changed"]:
            print("changed images: " + describe(inputs["changed"]))
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
