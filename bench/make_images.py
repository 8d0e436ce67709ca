#!/usr/bin/env python3
"""bench/make_images.py: a two-platform image set built from this machine's
own files, for `bench/run.sh --image` (images the fixture's generator did
not make, so manifold was not tuned on them).

Per platform (linux/amd64, linux/arm64/v8), layers in this order:
- one layer per `--layer DIR[:MB]`, of regular files under DIR up to MB
  (amd64 takes every other file, arm64 the others: the same kind of data,
  different bytes);
- one layer per `--shared DIR[:MB]`, the same bytes in both platforms;
- a small top layer that differs between the base and the `-v2` image.

For each platform and version it writes a plain docker-archive (`.tar`,
manifest.json last, as streamLayeredImage streams it), a `.tar.gz`, and a
stream script that cats the `.tar`, then prints the bench command line.

    python3 bench/make_images.py OUT [--layer DIR[:MB]]... [--shared DIR[:MB]]...

Defaults, directories any Debian machine has: `--layer /usr/lib:200
--layer /usr/share/doc:40 --shared /usr/share/locale:30`.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile

PLATFORMS = (("amd64", None), ("arm64", "v8"))
MAX_FILE = 64 << 20


def spec(text):
    """`DIR[:MB]` → (dir, bytes)."""
    path, _, mb = text.partition(":")
    if not os.path.isdir(path):
        raise argparse.ArgumentTypeError("%s is not a directory" % path)
    try:
        return path, int(mb or 50) << 20
    except ValueError:
        raise argparse.ArgumentTypeError("%s: MB must be a whole number" % text)


def files(root, budget, parity=None):
    """Regular files under root in a stable order, up to `budget` bytes;
    with `parity` 0 or 1, every other one."""
    picked, total, n = [], 0, 0
    for dirpath, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            size = os.path.getsize(path)
            if not 0 < size <= MAX_FILE or not os.access(path, os.R_OK):
                continue
            n += 1
            if parity is not None and n % 2 != parity:
                continue
            picked.append(path)
            total += size
            if total >= budget:
                return picked
    return picked


def write_layer(path, name, paths=(), data=None):
    """A layer tar under a Nix-store-like prefix, with fixed owners and times."""
    prefix = "nix/store/%s-%s" % (hashlib.sha256(name.encode()).hexdigest()[:32], name)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for p in paths:
            info = tar.gettarinfo(p, arcname=prefix + p)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 1, 0, 0, "root", "root"
            with open(p, "rb") as f:
                tar.addfile(info, f)
        if data is not None:
            info = tarfile.TarInfo(prefix + "/bin/app")
            info.size, info.mtime, info.mode = len(data), 1, 0o755
            tar.addfile(info, io.BytesIO(data))
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_archive(path, arch, variant, layers):
    """A docker-archive of `layers` [(tar path, sha256 hex)]: layers, config,
    manifest.json last."""
    config = {"architecture": arch, "os": "linux", "created": "1970-01-01T00:00:01Z",
              "config": {"Entrypoint": ["/bin/app"]},
              "rootfs": {"type": "layers", "diff_ids": ["sha256:" + d for _, d in layers]}}
    if variant:
        config["variant"] = variant
    config_bytes = json.dumps(config).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [],
                            "Layers": [d + "/layer.tar" for _, d in layers]}]).encode()
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for layer, digest in layers:
            tar.add(layer, arcname=digest + "/layer.tar")
        for name, data in ((config_name, config_bytes), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1
            tar.addfile(info, io.BytesIO(data))
    with open(path, "rb") as src, gzip.GzipFile(path + ".gz", "wb", compresslevel=1, mtime=0) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    stream = path[:-len(".tar")] + ".stream"
    with open(stream, "w") as f:
        f.write("#!%s\n# streams %s to stdout, like a streamLayeredImage script\n"
                "import shutil, sys\nwith open(%r, 'rb') as f:\n"
                "    shutil.copyfileobj(f, sys.stdout.buffer, 1 << 20)\n"
                % (sys.executable, path, path))
    os.chmod(stream, 0o755)
    return stream


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--layer", type=spec, action="append", metavar="DIR[:MB]",
                   help="a layer per platform from files under DIR (default: /usr/lib:200, "
                        "/usr/share/doc:40)")
    p.add_argument("--shared", type=spec, action="append", metavar="DIR[:MB]",
                   help="a layer both platforms share (default: /usr/share/locale:30)")
    a = p.parse_args()
    layers = a.layer if a.layer is not None else [spec("/usr/lib:200"), spec("/usr/share/doc:40")]
    shared = a.shared if a.shared is not None else [spec("/usr/share/locale:30")]
    out = os.path.abspath(a.out)
    os.makedirs(os.path.join(out, "layers"), exist_ok=True)

    def layer(name, paths=(), data=None):
        path = os.path.join(out, "layers", name + ".tar")
        return path, write_layer(path, name, paths, data)

    common = [layer("shared%d" % i, files(d, budget)) for i, (d, budget) in enumerate(shared)]
    base, changed = [], []
    for parity, (arch, variant) in enumerate(PLATFORMS):
        own = [layer("%s%d" % (arch, i), files(d, budget, parity))
               for i, (d, budget) in enumerate(layers)]
        for version, into in (("", base), ("-v2", changed)):
            app = layer("app-%s%s" % (arch, version),
                        data=hashlib.sha512((arch + version).encode()).digest() * (1 << 15))
            archive = os.path.join(out, "%s%s.tar" % (arch, version))
            into.append(write_archive(archive, arch, variant, own + common + [app]))
            sizes = [os.path.getsize(path) >> 20 for path, _ in own + common + [app]]
            print("%s: linux/%s%s, layers of %s MiB" % (
                archive, arch, "/" + variant if variant else "", ", ".join(map(str, sizes))))
    print("\nbench/run.sh --runs 3 %s %s" % (
        " ".join("--image " + s for s in base), " ".join("--changed-image " + s for s in changed)))
    print("(or the .tar / .tar.gz files beside them)")


if __name__ == "__main__":
    main()
