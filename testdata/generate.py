#!/usr/bin/env python3
"""Generates manifold's docker-archive test fixtures, deterministically.

Regenerate (from the repository root, Python 3 standard library only; the
`zstd` command is used when present for a small `.tar.zst`, else a valid but
uncompressed zstd frame is written):

    python3 testdata/generate.py

What it writes (see testdata/README.md):

* `stream-amd64`, `stream-arm64`: executable scripts that, like nixpkgs
  `stream_layered_image.py`, write an uncompressed docker-archive to stdout
  (Python tarfile, PAX format): store layers as `<sha256>/layer.tar`, a
  customisation layer, the config `<sha256>.json`, then `manifest.json` LAST.
  They import this file and build the content on the fly: no layer data is
  committed for them.
* `fd-amd64.tar.gz` (buildLayeredImage style, gzip written as two members like
  pigz), `fd-arm64.tar.zst`, `fd-amd64.tar` (plain): the same images as files.
* `hello-buildimage.tar.gz`: a dockerTools.buildImage style archive: layer
  directories named by legacy v1 ID (not the diff_id) holding `layer.tar`,
  `json` and `VERSION`, plus the config, `manifest.json` and `repositories`.

Every byte depends only on this script: fixed mtimes, owners and a seeded
generator for file contents. Layers `glibc` and `tzdata` are identical for both
architectures, `fd` differs, and so does the customisation layer (it names the
architecture). The `glibc` layer is larger than 1 MiB, the others smaller, so
both paths of the reader (streamed and buffered members) are exercised.
"""

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

HERE = os.path.dirname(os.path.realpath(__file__))
MTIME = 1
CREATED = "1970-01-01T00:00:01Z"
ARCHES = ("amd64", "arm64")

WORDS = (
    "nix store path layer image index manifest digest blob config tar gzip zstd "
    "registry upload tag platform arch linux amd64 arm64 glibc bash coreutils fd "
    "find search file directory symlink mode owner group root user data cache "
    "stream archive header padding block member order hash sha256 diff id push"
).split()


def text(seed, size):
    """`size` bytes of deterministic, compressible pseudo-text."""
    state = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big") | 1
    out = bytearray()
    line = 0
    while len(out) < size:
        words = []
        for _ in range(12):
            # 64-bit LCG (Knuth MMIX): fast and the same everywhere.
            state = (state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
            words.append(WORDS[(state >> 33) % len(WORDS)])
        out += ("%06d %s\n" % (line, " ".join(words))).encode()
        line += 1
    return bytes(out[:size])


def info(name, kind=tarfile.REGTYPE, size=0, mode=0o444, link=""):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.size = size
    ti.mode = mode
    ti.mtime = MTIME
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    ti.linkname = link
    return ti


def layer_tar(entries):
    """A layer tar from (name, kind, payload-or-linkname, mode) tuples."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload, mode in entries:
            if kind == "dir":
                tar.addfile(info(name, tarfile.DIRTYPE, mode=mode))
            elif kind == "link":
                tar.addfile(info(name, tarfile.SYMTYPE, mode=0o777, link=payload))
            else:
                tar.addfile(info(name, size=len(payload), mode=mode), io.BytesIO(payload))
    return buf.getvalue()


def store_dirs(path):
    parts = path.strip("/").split("/")
    return [("/".join(parts[: i + 1]), "dir", None, 0o555) for i in range(len(parts))]


def store_layer(store_path, files):
    entries = store_dirs(store_path)
    for rel, payload, mode in files:
        if "/" in rel:
            entries.append((store_path.strip("/") + "/" + rel.rsplit("/", 1)[0], "dir", None, 0o555))
        entries.append((store_path.strip("/") + "/" + rel, "file", payload, mode))
    # Nix layers list every directory once, sorted like a store walk.
    seen, unique = set(), []
    for e in entries:
        if e[0] not in seen:
            seen.add(e[0])
            unique.append(e)
    return layer_tar(unique)


def image(arch):
    """(layers, history comments) for one architecture, bottom to top."""
    glibc = "/nix/store/9a1mgl7k0w5vbn6iyzx4zrkrdh0mqh1q-glibc-2.40-66"
    tzdata = "/nix/store/2lc0kdg8v5k3rb2n1f6hq4yw3nqmhj9p-tzdata-2025a"
    fd = {
        "amd64": "/nix/store/f3x8rvq1k5hw0yxb7bqv1g2w2n6c3a4d-fd-10.2.0",
        "arm64": "/nix/store/kq0cd5lx2fx9m1h8c1yvbwwq5sfd8r7z-fd-10.2.0",
    }[arch]
    layers = [
        store_layer(glibc, [
            ("lib/libc.so.6", text("glibc/libc", 820_000), 0o555),
            ("lib/ld-linux.so.2", text("glibc/ld", 300_000), 0o555),
        ]),
        store_layer(tzdata, [("share/zoneinfo/UTC", text("tzdata/utc", 500_000), 0o444)]),
        store_layer(fd, [("bin/fd", text("fd/" + arch, 520_000), 0o555)]),
        layer_tar([
            ("bin", "link", fd + "/bin", 0o777),
            ("etc", "dir", None, 0o755),
            ("etc/group", "file", b"root:x:0:\nnogroup:x:65534:\n", 0o444),
            ("etc/os-release", "file", ("ID=manifold-fixture\nARCH=%s\n" % arch).encode(), 0o444),
            ("etc/passwd", "file", b"root:x:0:0::/root:/bin/sh\n", 0o444),
            ("tmp", "dir", None, 0o1777),
        ]),
    ]
    comments = [
        "store paths: ['%s']" % glibc,
        "store paths: ['%s']" % tzdata,
        "store paths: ['%s']" % fd,
        "customisation layer",
    ]
    return layers, comments


def config_bytes(arch, layers, comments):
    config = {
        "architecture": arch,
        "os": "linux",
        "created": CREATED,
        "config": {
            "Entrypoint": ["/bin/fd"],
            "Env": ["PATH=/bin"],
            "Labels": {
                "org.opencontainers.image.source": "https://example.invalid/manifold/fixtures",
                "org.opencontainers.image.title": "fd",
                "org.opencontainers.image.version": "10.2.0",
            },
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": ["sha256:" + hashlib.sha256(l).hexdigest() for l in layers],
        },
        "history": [{"created": CREATED, "comment": c} for c in comments],
    }
    return json.dumps(config, indent=4, sort_keys=True).encode()


def stream(arch, out, log=sys.stderr):
    """Writes the streamLayeredImage docker-archive for `arch` to `out`."""
    layers, comments = image(arch)
    config = config_bytes(arch, layers, comments)
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    names = []
    # A pipe is not seekable: tarfile's "w|" mode writes strictly in order,
    # padded to 10240 bytes at the end like nixpkgs' stream.
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for i, (layer, comment) in enumerate(zip(layers, comments), 1):
            print("Creating layer %d from %s" % (i, comment), file=log, flush=True)
            name = hashlib.sha256(layer).hexdigest() + "/layer.tar"
            names.append(name)
            tar.addfile(info(name, size=len(layer)), io.BytesIO(layer))
        tar.addfile(info(config_name, size=len(config)), io.BytesIO(config))
        manifest = json.dumps(
            [{"Config": config_name, "RepoTags": ["fd:10.2.0"], "Layers": names}], indent=4
        ).encode()
        print("Adding manifests...", file=log, flush=True)
        tar.addfile(info("manifest.json", size=len(manifest)), io.BytesIO(manifest))
    print("Done.", file=log, flush=True)


def stream_bytes(arch):
    buf = io.BytesIO()
    stream(arch, buf, log=io.StringIO())
    return buf.getvalue()


def pigz_like(data):
    """gzip as two concatenated members (pigz and `cat a.gz b.gz` do this)."""
    half = len(data) // 2
    return gzip.compress(data[:half], 9, mtime=0) + gzip.compress(data[half:], 9, mtime=0)


def zstd_bytes(data):
    if shutil.which("zstd"):
        return subprocess.run(
            ["zstd", "-19", "--no-check", "-q", "-c"], input=data, check=True, stdout=subprocess.PIPE
        ).stdout
    # Fallback: one frame of raw (stored) blocks, still a valid zstd stream.
    out = bytearray(b"\x28\xb5\x2f\xfd\x00\x38")  # magic, descriptor, window 128 KiB
    chunk = 128 * 1024
    for i in range(0, max(len(data), 1), chunk):
        block = data[i : i + chunk]
        last = 1 if i + chunk >= len(data) else 0
        out += (last | (len(block) << 3)).to_bytes(3, "little") + block
    return bytes(out)


def build_image_archive():
    """dockerTools.buildImage style: v1 ID directories, GNU tar sorted by name."""
    layers = [
        layer_tar(store_dirs("/nix/store/1b9p07z77phvv2hf6gm9f28syp39f1ag-hello-2.12.1")
                  + [("nix/store/1b9p07z77phvv2hf6gm9f28syp39f1ag-hello-2.12.1/bin", "dir", None, 0o555),
                     ("nix/store/1b9p07z77phvv2hf6gm9f28syp39f1ag-hello-2.12.1/bin/hello", "file",
                      text("hello", 200_000), 0o555)]),
        layer_tar([("bin", "link", "/nix/store/1b9p07z77phvv2hf6gm9f28syp39f1ag-hello-2.12.1/bin", 0o777),
                   ("etc", "dir", None, 0o755),
                   ("etc/hostname", "file", b"hello\n", 0o444)]),
    ]
    comments = ["hello", "extraCommands"]
    config = json.loads(config_bytes("amd64", layers, comments))
    config["config"] = {"Cmd": ["/bin/hello"], "Labels": {"org.opencontainers.image.title": "hello"}}
    config = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    members, v1_ids, parent = {}, [], None
    for i, layer in enumerate(layers):
        # Legacy v1 IDs: a hash of the layer's position and parent, NOT its diff_id.
        v1 = hashlib.sha256(("v1 %d %s" % (i, parent)).encode()).hexdigest()
        v1_json = {"id": v1, "created": CREATED, "container_config": {}}
        if parent:
            v1_json["parent"] = parent
        members[v1 + "/VERSION"] = b"1.0"
        members[v1 + "/json"] = json.dumps(v1_json, sort_keys=True).encode()
        members[v1 + "/layer.tar"] = layer
        v1_ids.append(v1)
        parent = v1
    members[config_name] = config
    members["manifest.json"] = json.dumps(
        [{"Config": config_name, "RepoTags": ["hello:latest"], "Layers": [v + "/layer.tar" for v in v1_ids]}]
    ).encode()
    members["repositories"] = json.dumps({"hello": {"latest": v1_ids[-1]}}).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        dirs = set()
        for name in sorted(members):
            if "/" in name and name.split("/")[0] not in dirs:
                dirs.add(name.split("/")[0])
                tar.addfile(info(name.split("/")[0] + "/", tarfile.DIRTYPE, mode=0o755))
            tar.addfile(info(name, size=len(members[name])), io.BytesIO(members[name]))
    return gzip.compress(buf.getvalue(), 6, mtime=0)


STREAM_SCRIPT = """#!/usr/bin/env python3
# Generated by testdata/generate.py: streams the {arch} fixture image as a
# docker-archive on stdout, like nixpkgs' streamLayeredImage does.
import os
import sys

sys.dont_write_bytecode = True  # leave no __pycache__ in testdata/
sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
import generate  # noqa: E402

generate.stream("{arch}", sys.stdout.buffer)
"""


def write(name, data, mode=0o644):
    path = os.path.join(HERE, name)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    print("wrote %s (%d bytes)" % (name, len(data)), file=sys.stderr)


def main():
    for arch in ARCHES:
        write("stream-" + arch, STREAM_SCRIPT.format(arch=arch).encode(), 0o755)
    write("fd-amd64.tar.gz", pigz_like(stream_bytes("amd64")))
    write("fd-arm64.tar.zst", zstd_bytes(stream_bytes("arm64")))
    write("fd-amd64.tar", stream_bytes("amd64"))
    write("hello-buildimage.tar.gz", build_image_archive())


if __name__ == "__main__":
    main()
