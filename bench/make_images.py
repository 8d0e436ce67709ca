#!/usr/bin/env python3
"""bench/make_images.py: a two-platform image set built from this machine's
own files, for `bench/run.sh --image` (images the fixture's generator did
not make, so manifold was not tuned on them).

Per platform (linux/amd64, linux/arm64/v8), layers in this order:
- one layer per `--layer DIR[:MB]`, of the files under DIR up to MB, walked
  and written as the fixture's layers are (make_fixture.py; amd64 takes
  every other file, arm64 the others: the same kind of data, different
  bytes);
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
import stat
import sys
import tarfile

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The fixture's own pieces: its file walk, its layer writer (hashing while it
# writes) and its tar headers.
from make_fixture import CREATED, files_layer, tar_info, walk_files, write_layer  # noqa: E402

PLATFORMS = (("amd64", None), ("arm64", "v8"))


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
    """Files and symlinks under root as the fixture walks them, up to
    `budget` bytes; with `parity` 0 or 1, every other one."""
    picked, total = [], 0
    for n, (path, st) in enumerate(walk_files([root], set())):
        if parity is not None and n % 2 != parity:
            continue
        picked.append(path)
        if stat.S_ISREG(st.st_mode):
            total += st.st_size
        if total >= budget:
            break
    return picked


def app_layer(layers_dir, name):
    """A 2 MiB top layer whose bytes depend on `name`."""
    data = hashlib.sha512(name.encode()).digest() * (1 << 15)

    def build(tar):
        for d in ("app", "app/bin"):
            tar.addfile(tar_info(d, tarfile.DIRTYPE, mode=0o555))
        tar.addfile(tar_info("app/bin/" + name, size=len(data), mode=0o555), io.BytesIO(data))

    return write_layer(layers_dir, build)


def write_archive(path, arch, variant, layers):
    """A docker-archive of `layers` [(tar path, sha256 hex)]: layers, config,
    manifest.json last."""
    config = {"architecture": arch, "os": "linux", "created": CREATED,
              "config": {"Entrypoint": ["/app/bin/app-" + arch]},
              "rootfs": {"type": "layers", "diff_ids": ["sha256:" + d for _, d in layers]}}
    if variant:
        config["variant"] = variant
    config_bytes = json.dumps(config).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [],
                            "Layers": [d + "/layer.tar" for _, d in layers]}]).encode()
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for layer, digest in layers:
            with open(layer, "rb") as f:
                tar.addfile(tar_info(digest + "/layer.tar", size=os.fstat(f.fileno()).st_size), f)
        for name, data in ((config_name, config_bytes), ("manifest.json", manifest)):
            tar.addfile(tar_info(name, size=len(data)), io.BytesIO(data))
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
    layers_dir = os.path.join(out, "layers")
    os.makedirs(layers_dir, exist_ok=True)

    def layer(written):
        """(path, sha256 hex) of a layer the fixture's writer wrote."""
        sha, _, relative = written
        return os.path.join(out, relative), sha

    common = [layer(files_layer(layers_dir, "shared%d" % i, files(d, budget)))
              for i, (d, budget) in enumerate(shared)]
    base, changed = [], []
    for parity, (arch, variant) in enumerate(PLATFORMS):
        own = [layer(files_layer(layers_dir, "%s%d" % (arch, i), files(d, budget, parity)))
               for i, (d, budget) in enumerate(layers)]
        for version, into in (("", base), ("-v2", changed)):
            app = layer(app_layer(layers_dir, "app-%s%s" % (arch, version)))
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
