#!/usr/bin/env python3
"""Makes the bad-input corpus in this directory, deterministically.

Python 3 standard library plus the `zstd` command. Run from anywhere:

    python3 testdata/bad/generate.py

Every archive derives from one tiny valid docker-archive (`valid.tar`, one
layer holding one file), so each case breaks exactly one thing.
"""

import gzip
import hashlib
import io
import json
import os
import random
import subprocess
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))


def out(name):
    return os.path.join(HERE, name)


def write(name, data, mode=0o644):
    path = out(name)
    if os.path.lexists(path) and not os.path.isdir(path):
        os.remove(path)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def tar_bytes(members):
    """A deterministic tar of `(name, bytes)` members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def sha(data):
    return hashlib.sha256(data).hexdigest()


rng = random.Random(20261128)
LAYER = tar_bytes([("hello.txt", b"hello from a tiny layer\n" * 40)])
LAYER_ID = sha(LAYER)


def config(diff_ids=None, arch="amd64"):
    return json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": ["/hello"]},
            "rootfs": {
                "type": "layers",
                "diff_ids": diff_ids if diff_ids is not None else ["sha256:" + LAYER_ID],
            },
        },
        sort_keys=True,
    ).encode()


def archive(cfg=None, manifest=None, layers=True, include_config=True, extra=()):
    cfg = config() if cfg is None else cfg
    cfg_name = sha(cfg) + ".json"
    members = []
    if layers:
        members.append((LAYER_ID + "/layer.tar", LAYER))
    if include_config:
        members.append((cfg_name, cfg))
    members.extend(extra)
    if manifest is None:
        manifest = json.dumps(
            [{"Config": cfg_name, "RepoTags": ["hello:1"], "Layers": [LAYER_ID + "/layer.tar"]}]
        ).encode()
    if manifest is not False:
        members.append(("manifest.json", manifest))
    return tar_bytes(members)


VALID = archive()
write("valid.tar", VALID)

# Not archives at all.
write("empty.tar", b"")
write("garbage.bin", bytes(rng.getrandbits(8) for _ in range(4096)))
write("garbage.tar.gz", gzip.compress(bytes(rng.getrandbits(8) for _ in range(4096)), mtime=0))
write("garbage.tar.zst", b"\x28\xb5\x2f\xfd" + bytes(rng.getrandbits(8) for _ in range(256)))

# Truncated at several points.
layer_data_at = VALID.index(b"hello from a tiny layer")
write("truncated-in-first-header.tar", VALID[:300])
write("truncated-in-layer.tar", VALID[: layer_data_at + 100])
write("truncated-before-manifest.tar", VALID[: VALID.index(b"manifest.json") - 200])
write("truncated-in-manifest.tar", VALID[: VALID.rindex(b'[{"Config"') + 20])
gz = gzip.compress(VALID, mtime=0)
write("truncated.tar.gz", gz[: len(gz) // 2])
zst = subprocess.run(["zstd", "-q", "-c", "-19"], input=VALID, stdout=subprocess.PIPE, check=True).stdout
write("truncated.tar.zst", zst[: len(zst) // 2])

# Well-formed tar, wrong contents.
write("no-manifest.tar", archive(manifest=False))
write("manifest-malformed.tar", archive(manifest=b'[{"Config": "x.json", "Layers": ['))
write("manifest-not-a-list.tar", archive(manifest=b'{"Config": "x.json"}'))
cfg = config()
two = json.dumps(
    [
        {"Config": sha(cfg) + ".json", "Layers": [LAYER_ID + "/layer.tar"]},
        {"Config": sha(cfg) + ".json", "Layers": [LAYER_ID + "/layer.tar"]},
    ]
).encode()
write("two-images.tar", archive(manifest=two))
write("missing-config.tar", archive(include_config=False))
write("missing-layer.tar", archive(layers=False))
write("config-not-json.tar", archive(cfg=b"this is not json\n"))
write("wrong-diff-ids.tar", archive(cfg=config(diff_ids=["sha256:" + "0" * 64])))
write("too-few-diff-ids.tar", archive(cfg=config(diff_ids=[])))

# Stream scripts.
write(
    "stream-exits-nonzero",
    b"#!/bin/sh\nhead -c 2000 \"$(dirname \"$0\")/valid.tar\"\necho 'nix build exploded' >&2\nexit 3\n",
    0o755,
)
write("stream-writes-nothing", b"#!/bin/sh\nexit 0\n", 0o755)
write("stream-hangs", b"#!/bin/sh\nexec sleep 600\n", 0o755)
write("stream-not-executable", b"#!/bin/sh\ncat \"$(dirname \"$0\")/valid.tar\"\n", 0o644)

# nix2container image.json files.
write("n2c-malformed.json", b'{"version": 1, "image-config": {, "layers": []}\n')
write(
    "n2c-wrong-types.json",
    json.dumps({"version": "one", "image-config": [], "layers": {"a": 1}}).encode(),
)
write(
    "n2c-missing-store-path.json",
    json.dumps(
        {
            "version": 1,
            "image-config": {"Cmd": ["/hello"]},
            "arch": "amd64",
            "layers": [
                {
                    "digest": "sha256:" + "1" * 64,
                    "size": 10,
                    "diff_ids": "sha256:" + "2" * 64,
                    "paths": [{"path": "/nix/store/00000000000000000000000000000000-missing"}],
                    "mediatype": "application/vnd.oci.image.layer.v1.tar",
                }
            ],
        }
    ).encode(),
)

# Not files at all.
os.makedirs(out("not-a-layout"), exist_ok=True)
write("not-a-layout/README", b"a directory without oci-layout and index.json\n")
for a, b in (("symlink-loop-a", "symlink-loop-b"), ("symlink-loop-b", "symlink-loop-a")):
    if os.path.lexists(out(a)):
        os.remove(out(a))
    os.symlink(b, out(a))
