#!/usr/bin/env python3
"""Writes the fuzzers' seed inputs into fuzz/seeds/<target>/ (not committed).

Real shapes from the repository's fixtures (testdata/*.tar*, the nix2container
JSON files) plus small valid docker-archives made here, small enough for
libFuzzer to mutate (the fixture archives are megabytes). Python 3 standard
library; `zstd` is used when present. Run from anywhere:

    python3 fuzz/make-seeds.py
"""
import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
ROOT = FUZZ.parent
SEEDS = FUZZ / "seeds"


def member(tar, name, data, **kw):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o444
    info.mtime = 1
    for k, v in kw.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(data))


def layer(seed, files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for i in range(files):
            member(t, f"file-{seed}-{i}", bytes((seed * 31 + j) % 251 for j in range(100 + i)))
    return buf.getvalue()


def archive(layers, fmt=tarfile.PAX_FORMAT, legacy=False, link_repeat=False, manifest_first=False):
    ids = ["sha256:" + hashlib.sha256(l).hexdigest() for l in layers]
    config = json.dumps({
        "architecture": "arm64", "os": "linux",
        "config": {"Labels": {"org.opencontainers.image.version": "1.0"}},
        "rootfs": {"type": "layers", "diff_ids": ids},
        "history": [{} for _ in layers],
    }).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    names = []
    members = []
    for i, l in enumerate(layers):
        d = hashlib.sha256(l).hexdigest() if not legacy else f"{i:064x}"
        name = f"{d}/layer.tar"
        if link_repeat and i > 0 and l == layers[0]:
            members.append(("link", name, names[0]))
        else:
            members.append(("file", name, l))
            if legacy:
                members.append(("file", f"{d}/VERSION", b"1.0"))
                members.append(("file", f"{d}/json", b"{}"))
        names.append(name)
    manifest = json.dumps([{"Config": config_name, "RepoTags": ["fuzz:1"], "Layers": names}]).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        if manifest_first:
            member(t, "manifest.json", manifest)
        for kind, name, data in members:
            if kind == "link":
                member(t, name, b"", type=tarfile.SYMTYPE, linkname="../" + data)
            else:
                member(t, name, data)
        member(t, config_name, config)
        if not manifest_first:
            member(t, "manifest.json", manifest)
        if legacy:
            member(t, "repositories", b'{"fuzz":{"1":"0"}}')
    return buf.getvalue()


def two_images():
    """`docker save a b`: two images sharing a layer, tagged x:1 and y:2."""
    shared, own_a, own_b = layer(5, 2), layer(6, 1), layer(7, 1)
    members, entries = {}, []
    for tag, layers in [("x:1", [shared, own_a]), ("y:2", [shared, own_b])]:
        ids = ["sha256:" + hashlib.sha256(l).hexdigest() for l in layers]
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": ids}}).encode()
        config_name = hashlib.sha256(config).hexdigest() + ".json"
        names = [i[len("sha256:"):] + "/layer.tar" for i in ids]
        members.update(zip(names, layers))
        members[config_name] = config
        entries.append({"Config": config_name, "RepoTags": [tag], "Layers": names})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in members.items():
            member(t, name, data)
        member(t, "manifest.json", json.dumps(entries).encode())
    return buf.getvalue()


def put(target, name, data):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def main():
    if SEEDS.exists():
        shutil.rmtree(SEEDS)
    a, b = layer(1, 2), layer(2, 1)
    small = {
        "pax-manifest-last.tar": archive([a, b]),
        "ustar-manifest-first.tar": archive([a], fmt=tarfile.USTAR_FORMAT, manifest_first=True),
        "gnu-legacy.tar": archive([a, b], fmt=tarfile.GNU_FORMAT, legacy=True),
        "symlinked-repeat.tar": archive([a, b, a], link_repeat=True),
        "no-layers.tar": archive([]),
        "two-images.tar": two_images(),
    }
    for name, data in small.items():
        put("docker_archive", name, data)
        put("docker_archive", name + ".gz", gzip.compress(data, mtime=0))
    if shutil.which("zstd"):
        for name, data in small.items():
            z = subprocess.run(["zstd", "-q", "-c", "-3"], input=data, capture_output=True, check=True).stdout
            put("docker_archive", name + ".zst", z)
    for f in ["fd-amd64.tar", "fd-amd64.tar.gz", "fd-arm64.tar.zst", "hello-buildimage.tar.gz"]:
        put("docker_archive", f, (ROOT / "testdata" / f).read_bytes())

    # OCI layout archives: `./`-prefixed as `tar -C DIR .` writes them, and
    # with a symlinked blob.
    blob = b"blob"
    digest = hashlib.sha256(blob).hexdigest()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:" + digest, "size": len(blob)}]}).encode()
    for prefix, link in [("./", False), ("", True)]:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
            member(t, prefix + "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
            member(t, prefix + "index.json", index)
            member(t, prefix + "blobs/sha256/" + digest, blob)
            if link:
                member(t, "blobs/sha256/a", b"", type=tarfile.SYMTYPE, linkname=digest)
        name = "layout-dot.tar" if prefix else "layout-link.tar"
        put("oci_archive", name, buf.getvalue())
        put("oci_archive", name + ".gz", gzip.compress(buf.getvalue(), mtime=0))

    # gzip streams: one member, concatenated members, every header field.
    put("gunzip", "one.gz", gzip.compress(layer(1, 3), mtime=0))
    put("gunzip", "two-members.gz", gzip.compress(b"first", mtime=0) + gzip.compress(layer(2, 2), 9, mtime=0))
    put("gunzip", "empty.gz", gzip.compress(b"", mtime=0))
    head = bytes([0x1f, 0x8b, 8, 0x1e, 0, 0, 0, 0, 0, 255]) + b"\x03\x00ab" + b"name\x00" + b"comment\x00"
    import zlib
    crc = zlib.crc32(head) & 0xffff
    body = zlib.compressobj(6, zlib.DEFLATED, -15)
    payload = b"hello hello hello"
    raw = body.compress(payload) + body.flush()
    trailer = (zlib.crc32(payload) & 0xffffffff).to_bytes(4, "little") + len(payload).to_bytes(4, "little")
    put("gunzip", "fields.gz", head + crc.to_bytes(2, "little") + raw + trailer)

    n2c = ROOT / "testdata" / "nix2container"
    for f in sorted(n2c.glob("*.json")):
        data = f.read_bytes()
        put("image_json", f.name, data)
        put("tar_roundtrip", f.name, data)
    # A minimal image.json of each era.
    put("image_json", "minimal.json", b'{"version":1,"image-config":{},"layers":null}')
    put("image_json", "arch-created.json", json.dumps({
        "version": 1, "arch": "arm64", "created": "0001-01-01T00:00:00Z",
        "image-config": {"Env": ["A=1"]},
        "layers": [{
            "digest": "sha256:" + "a" * 64, "size": 10, "diff_ids": "sha256:" + "a" * 64,
            "mediatype": "application/vnd.oci.image.layer.v1.tar",
            "paths": [{"path": "/nix/store/x-y", "options": {
                "rewrite": {"regex": "^/nix/store/x-y", "repl": "/app"},
                "perms": [{"regex": ".*", "mode": "0755", "uid": 1, "gid": 2, "uname": "u", "gname": "g"}]}}],
        }],
    }).encode())

    refs = [
        "alpine", "alpine:3.20", "library/alpine@sha256:" + "0" * 64,
        "ghcr.io/owner/repo:v1.2.3", "localhost:5000/a/b", "[::1]:5000/x:y",
        "127.0.0.1:5000/team/app@sha256:" + "f" * 64, "Docker.IO/Library/Alpine",
        "registry-1.docker.io/x/y:latest", "quay.io/a__b/c-d.e",
        "linux/arm64/v8=archive:./out.tar.gz", "aarch64-linux=stream:./result",
        "docker://ghcr.io/o/r:tag", "nix2container:image.json", "oci:./layout",
        "linux/amd64", "x86_64-linux", "v1.2.3+build.4", "feature/Some Branch!", "-.leading",
    ]
    for i, r in enumerate(refs):
        put("reference", f"seed-{i:02}", r.encode())


main()
