#!/usr/bin/env python3
"""Builds the benchmark's two-architecture image fixture, and streams it.

Sub-commands (Python 3 standard library only):

    make_fixture.py build DIR [--layer-mb 100] [--random-mb 16]
    make_fixture.py stream DIR IMAGE          # what the stream scripts run
    make_fixture.py tarballs DIR              # after build: tarball-IMAGE.tar.gz
    make_fixture.py n2c DIR --gen GODIR [--layer-mb 60] [--random-mb 16]

`build` writes into DIR (a cache directory, never committed):

* `layers/<sha256>.tar`: layer tarballs. Each architecture gets three layers of
  real software taken from this machine (distinct slices of
  /usr/lib/x86_64-linux-gnu, /usr/bin + /usr/libexec, /usr/share: shared
  libraries, executables, data; the rest of /usr when one runs short), about
  `--layer-mb` MB each, so they compress
  like real images do (gzip ratio around 0.4 to 0.5), plus a top layer holding
  `--random-mb` MB of random bytes (an application's incompressible blob).
  amd64 and arm64 take different files, so no layer is shared between them.
* the `-v2` variant of each architecture, where the top random layer differs
  (new seed) and everything else is the same: "one layer per arch changed".
* `images.json`: for each image (amd64, arm64, amd64-v2, arm64-v2) its config
  and layer files.
* `stream-amd64`, `stream-arm64`, `stream-amd64-v2`, `stream-arm64-v2`:
  executable scripts that, like nixpkgs' `streamLayeredImage`, write an
  uncompressed docker-archive to stdout: members `<sha256>/layer.tar`, then the
  config `<sha256>.json`, then `manifest.json` LAST, PAX headers, padded to a
  10240-byte record; progress lines on stderr. Unlike nixpkgs they copy
  pre-built layer tarballs instead of tarring store paths (twice) on the fly,
  so the stream itself is cheap: the benchmark measures the publishers.

`tarballs` writes `tarball-<image>.tar.gz` for each image, the stream
compressed as nixpkgs' `buildLayeredImage` does (`pigz -nTR`, or `gzip -n`
without pigz): the benchmark's `--tarballs` inputs.

`n2c` builds the nix2container scenario's fixture into DIR (see `n2c_build`):
a fake Nix store of real files, one nix2container `image.json` per
architecture whose layer digests come from the Go generator
(testdata/nix2container/gen, `layers` mode, an independent implementation of
nix2container's layer tar), and one docker-archive per architecture holding
the same layer tars, for the skopeo stand-in.

Layer tarballs are deterministic for a given machine (sorted names, mtime 1,
owner root), so DIR is reused across runs; `build` does nothing when
`images.json` already matches the parameters.
"""

import argparse
import hashlib
import io
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tarfile

MTIME = 1
CREATED = "1970-01-01T00:00:01Z"
BLOCK = 512
RECORD = 10240
COPY_BUF = 1 << 20
# A single huge file (libLLVM, …) would make a one-file layer: real Nix layers
# are store paths with many files, so leave those out.
MAX_FILE = 24 << 20

SOURCES = [
    # (layer name, roots): amd64 takes the first slice of each, arm64 the
    # next. No file goes in two layers; a small system (minimal Debian) runs
    # out of /usr/bin, so each list ends in all of /usr.
    ("libs", ["/usr/lib/x86_64-linux-gnu", "/usr/lib", "/usr"]),
    ("bin", ["/usr/bin", "/usr/sbin", "/usr/libexec", "/usr"]),
    ("share", ["/usr/share", "/usr"]),
]
ARCHES = ("amd64", "arm64")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def walk_files(roots, seen):
    """(path, lstat) of regular files and symlinks under roots, sorted, each
    once: `seen` holds the (device, inode) pairs already taken."""
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                if stat.S_ISLNK(st.st_mode):
                    seen.add(key)
                    yield path, st
                elif stat.S_ISREG(st.st_mode) and 0 < st.st_size <= MAX_FILE:
                    if not os.access(path, os.R_OK):
                        continue
                    seen.add(key)
                    yield path, st


def slices(roots, target, count, seen):
    """`count` consecutive slices of about `target` bytes of files under roots."""
    out, cur, size = [], [], 0
    for path, st in walk_files(roots, seen):
        cur.append(path)
        if stat.S_ISREG(st.st_mode):
            size += st.st_size
        if size >= target:
            out.append(cur)
            if len(out) == count:
                return out
            cur, size = [], 0
    if cur:
        out.append(cur)
    if len(out) < count:
        raise SystemExit("error: not enough files under %s for %d slices of %d bytes\n"
                         "hint: use a smaller `--layer-mb`" % (roots, count, target))
    return out


def tar_info(name, kind=tarfile.REGTYPE, size=0, mode=0o444, link=""):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.size = size
    ti.mode = mode
    ti.mtime = MTIME
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    ti.linkname = link
    return ti


class HashingFile:
    """A write-only file that hashes and counts what goes through it."""

    def __init__(self, f):
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def write(self, b):
        self.h.update(b)
        self.n += len(b)
        return self.f.write(b)

    def tell(self):
        return self.n


def write_layer(layers_dir, build):
    """Runs build(tarfile) into a temp file; returns (sha256 hex, size, path)."""
    tmp = os.path.join(layers_dir, ".tmp-%d.tar" % os.getpid())
    with open(tmp, "wb") as raw:
        hf = HashingFile(raw)
        with tarfile.open(fileobj=hf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            build(tar)
    sha = hf.h.hexdigest()
    os.replace(tmp, os.path.join(layers_dir, sha + ".tar"))
    # Relative to the fixture directory, so the cache can move.
    return sha, hf.n, "layers/%s.tar" % sha


def store_prefix(name):
    h = hashlib.sha256(name.encode()).hexdigest()
    alphabet = "0123456789abcdfghijklmnpqrsvwxyz"  # Nix's base32 alphabet
    return "nix/store/%s-%s" % ("".join(alphabet[int(h[i : i + 2], 16) % 32] for i in range(0, 64, 2)), name)


def files_layer(layers_dir, store_name, paths):
    prefix = store_prefix(store_name)

    def build(tar):
        dirs = set()

        def add_dirs(rel):
            parts = rel.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    tar.addfile(tar_info(d, tarfile.DIRTYPE, mode=0o555))

        for path in paths:
            rel = prefix + path
            add_dirs(rel)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                tar.addfile(tar_info(rel, tarfile.SYMTYPE, mode=0o777, link=os.readlink(path)))
                continue
            try:
                with open(path, "rb") as f:
                    # The file may have changed size since the walk: take what lstat said.
                    tar.addfile(tar_info(rel, size=st.st_size, mode=0o555 if st.st_mode & 0o111 else 0o444), f)
            except (OSError, tarfile.TarError) as e:
                raise SystemExit("cannot read %s: %s" % (path, e))

    return write_layer(layers_dir, build)


def random_layer(layers_dir, store_name, seed, size):
    prefix = store_prefix(store_name)
    rng = random.Random(seed)

    def build(tar):
        for d in ("nix", "nix/store", prefix, prefix + "/bin"):
            tar.addfile(tar_info(d, tarfile.DIRTYPE, mode=0o555))
        data = rng.randbytes(size)
        tar.addfile(tar_info(prefix + "/bin/app", size=size, mode=0o555), io.BytesIO(data))
        tar.addfile(tar_info("etc", tarfile.DIRTYPE, mode=0o755))
        tar.addfile(tar_info("etc/os-release", size=len(seed), mode=0o444), io.BytesIO(seed.encode()))

    return write_layer(layers_dir, build)


def config_for(arch, layers):
    config = {
        "architecture": arch,
        "os": "linux",
        "created": CREATED,
        "config": {
            "Entrypoint": ["/bin/app"],
            "Env": ["PATH=/bin"],
            "Labels": {"org.opencontainers.image.title": "manifold-bench"},
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + l["sha256"] for l in layers]},
        "history": [{"created": CREATED, "comment": l["comment"]} for l in layers],
    }
    return json.dumps(config, indent=4, sort_keys=True)


STREAM_SCRIPT = """#!{python}
# Generated by bench/make_fixture.py: streams the {image} benchmark image as a
# docker-archive on stdout, like nixpkgs' streamLayeredImage (whose shebang
# also names its interpreter by absolute path, with no PATH lookup or shim).
import sys
sys.dont_write_bytecode = True
sys.path.insert(0, {bench!r})
import make_fixture
make_fixture.stream({dir!r}, {image!r}, sys.stdout.buffer)
"""


ARCHES_IMAGES = [a + v for a in ARCHES for v in ("", "-v2")]


def write_scripts(out_dir, images):
    """The stream scripts hold absolute paths: rewritten on every build."""
    bench_dir = os.path.dirname(os.path.realpath(__file__))
    abs_out = os.path.realpath(out_dir)
    for image in images:
        script = os.path.join(out_dir, "stream-" + image)
        with open(script, "w") as f:
            f.write(STREAM_SCRIPT.format(
                python=os.path.realpath(sys.executable), image=image, bench=bench_dir, dir=abs_out))
        os.chmod(script, 0o755)


def build(out_dir, layer_mb, random_mb, split=1):
    params = {"version": 3, "layer_mb": layer_mb, "random_mb": random_mb}
    if split > 1:
        params["split"] = split
    meta_path = os.path.join(out_dir, "images.json")
    try:
        with open(meta_path) as f:
            if json.load(f).get("params") == params:
                log("fixture up to date in %s" % out_dir)
                write_scripts(out_dir, ARCHES_IMAGES)
                return
    except (OSError, ValueError):
        pass
    layers_dir = os.path.join(out_dir, "layers")
    os.makedirs(layers_dir, exist_ok=True)
    for name in os.listdir(layers_dir):
        os.unlink(os.path.join(layers_dir, name))
    target = layer_mb * 1_000_000
    per_arch = {a: [] for a in ARCHES}
    seen = set()
    for kind, roots in SOURCES:
        # --split K: each kind becomes K smaller layers per architecture, the
        # shape of a streamLayeredImage with many store paths (up to 100 layers).
        cuts = slices(roots, target // split, len(ARCHES) * split, seen)
        for n, paths in enumerate(cuts):
            arch = ARCHES[n // split]
            name = "%s-%s" % (kind, arch) if split == 1 else "%s%d-%s" % (kind, n % split, arch)
            sha, size, path = files_layer(layers_dir, name, paths)
            log("layer %s: %d files, %.1f MB" % (name, len(paths), size / 1e6))
            per_arch[arch].append({"sha256": sha, "size": size, "path": path, "comment": "store paths: " + name})
    images = {}
    for arch in ARCHES:
        for variant in ("", "-v2"):
            seed = "app-%s%s" % (arch, variant)
            sha, size, path = random_layer(layers_dir, "app-" + arch, seed, random_mb << 20)
            log("layer %s: %.1f MB random" % (seed, size / 1e6))
            layers = per_arch[arch] + [{"sha256": sha, "size": size, "path": path, "comment": "app " + seed}]
            images[arch + variant] = {"arch": arch, "config": config_for(arch, layers), "layers": layers}
    write_scripts(out_dir, images)
    with open(meta_path + ".tmp", "w") as f:
        json.dump({"params": params, "images": images}, f, indent=1)
    os.replace(meta_path + ".tmp", meta_path)
    total = sum(l["size"] for a in ARCHES for l in images[a]["layers"])
    log("fixture: %.1f MB uncompressed over both architectures, in %s" % (total / 1e6, out_dir))


def tarballs(out_dir):
    """Writes tarball-<image>.tar.gz next to each stream script, the way
    nixpkgs' buildLayeredImage does (`stream | pigz -nTR`, level 6), once."""
    with open(os.path.join(out_dir, "images.json")) as f:
        images = json.load(f)["images"]
    gz = ["pigz", "-nTR"] if shutil.which("pigz") else ["gzip", "-n"]
    for image in images:
        path = os.path.join(out_dir, "tarball-%s.tar.gz" % image)
        if os.path.exists(path):
            continue
        log("tarball %s (%s)" % (image, " ".join(gz)))
        with open(path + ".tmp", "wb") as out:
            streamer = subprocess.Popen([os.path.join(out_dir, "stream-" + image)],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            rc = subprocess.run(gz, stdin=streamer.stdout, stdout=out).returncode
            streamer.stdout.close()
            if streamer.wait() != 0 or rc != 0:
                raise SystemExit("cannot write %s" % path)
        os.replace(path + ".tmp", path)


def header(name, size):
    return tar_info(name, size=size).tobuf(tarfile.PAX_FORMAT)


def stream(out_dir, image, out):
    """Writes the docker-archive of `image` to `out`, manifest.json last."""
    with open(os.path.join(out_dir, "images.json")) as f:
        img = json.load(f)["images"][image]
    written = 0

    def emit(b):
        nonlocal written
        out.write(b)
        written += len(b)

    def pad():
        if written % BLOCK:
            emit(b"\0" * (BLOCK - written % BLOCK))

    names = []
    for i, layer in enumerate(img["layers"], 1):
        log("Creating layer %d from %s" % (i, layer["comment"]))
        name = layer["sha256"] + "/layer.tar"
        names.append(name)
        emit(header(name, layer["size"]))
        left = layer["size"]
        with open(os.path.join(out_dir, layer["path"]), "rb") as f:
            while left:
                chunk = f.read(min(COPY_BUF, left))
                if not chunk:
                    raise SystemExit("%s: shorter than recorded" % layer["path"])
                emit(chunk)
                left -= len(chunk)
        pad()
    config = img["config"].encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    emit(header(config_name, len(config)))
    emit(config)
    pad()
    log("Adding manifests...")
    manifest = json.dumps([{"Config": config_name, "RepoTags": ["manifold-bench:latest"], "Layers": names}], indent=4).encode()
    emit(header("manifest.json", len(manifest)))
    emit(manifest)
    pad()
    emit(b"\0" * (2 * BLOCK))
    if written % RECORD:
        emit(b"\0" * (RECORD - written % RECORD))
    out.flush()
    log("Done.")


# --- nix2container fixture ------------------------------------------------------

N2C_PATHS_PER_LAYER = 4
N2C_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"


def go_quote_meta(s):
    """Go's regexp.QuoteMeta: the same escapes on both sides (Go, Rust)."""
    return "".join("\\" + c if c in "\\.+*?()|[]{}^$" else c for c in s)


def n2c_store_path(store, name):
    return os.path.join(store, store_prefix(name))


def n2c_copy(dst_root, paths):
    """Copies `paths` (files and symlinks under /usr) below dst_root, Nix-style
    modes (files 0444/0555, directories 0555 once filled)."""
    dirs = set()
    for path in paths:
        rel = os.path.relpath(path, "/usr")
        dst = os.path.join(dst_root, rel)
        d = os.path.dirname(dst)
        if d not in dirs:
            os.makedirs(d, exist_ok=True)
            dirs.add(d)
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(path), dst)
            continue
        with open(path, "rb") as src, open(dst, "wb") as out:
            while True:
                chunk = src.read(COPY_BUF)
                if not chunk:
                    break
                out.write(chunk)
        os.chmod(dst, 0o555 if st.st_mode & 0o111 else 0o444)
    return dirs


def n2c_seal(root):
    """Directories 0555, as in a Nix store (root still writes and deletes)."""
    for dirpath, _, _ in os.walk(root, topdown=False):
        os.chmod(dirpath, 0o555)


def n2c_build(out_dir, gen_dir, layer_mb, random_mb):
    """Fake store `store/nix/store/<hash>-<name>/…`, `image-<arch>.json`,
    `archive-<arch>.tar`. Per architecture four layers: `libs`, `bin`,
    `share` (about layer_mb MB of real files each, split over
    N2C_PATHS_PER_LAYER store paths) and `app` (random_mb MiB of random
    bytes, one store path). Every path carries nix2container's rewrite
    option `^<store root>` -> "" so the layer tar names `/nix/store/…`."""
    import subprocess

    params = {"version": 1, "layer_mb": layer_mb, "random_mb": random_mb}
    out_dir = os.path.realpath(out_dir)
    meta_path = os.path.join(out_dir, "fixture.json")
    try:
        with open(meta_path) as f:
            if json.load(f).get("params") == params:
                log("nix2container fixture up to date in %s" % out_dir)
                return
    except (OSError, ValueError):
        pass
    if os.path.exists(out_dir):
        import shutil
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    store_root = os.path.join(out_dir, "store")
    store = os.path.join(store_root, "nix", "store")
    os.makedirs(store)
    gen = os.path.join(out_dir, "n2c-gen")
    subprocess.run(["go", "build", "-o", gen, "."], cwd=gen_dir, check=True)
    options = {"rewrite": {"regex": "^" + go_quote_meta(store_root), "repl": ""}}

    per_arch = {a: [] for a in ARCHES}  # layer name -> [store path dirs]
    seen = set()
    for kind, roots in SOURCES:
        cuts = slices(roots, layer_mb * 1_000_000, len(ARCHES), seen)
        for arch, paths in zip(ARCHES, cuts):
            dirs = []
            n = N2C_PATHS_PER_LAYER
            for i in range(n):
                part = paths[i * len(paths) // n:(i + 1) * len(paths) // n]
                d = n2c_store_path(store_root, "%s-%s-%d" % (kind, arch, i + 1))
                os.makedirs(d)
                n2c_copy(d, part)
                dirs.append(d)
            per_arch[arch].append(("%s-%s" % (kind, arch), dirs))
            log("n2c store paths %s-%s: %d files" % (kind, arch, len(paths)))
    for arch in ARCHES:
        d = n2c_store_path(store_root, "app-" + arch)
        os.makedirs(os.path.join(d, "bin"))
        rng = random.Random("n2c-app-" + arch)
        with open(os.path.join(d, "bin", "app"), "wb") as f:
            left = random_mb << 20
            while left:
                n = min(COPY_BUF, left)
                f.write(rng.randbytes(n))
                left -= n
        os.chmod(os.path.join(d, "bin", "app"), 0o555)
        per_arch[arch].append(("app-" + arch, [d]))
    n2c_seal(store_root)

    # Digests from the Go generator, which also writes the tars for the archives.
    tmp = os.path.join(out_dir, "tmp")
    os.makedirs(tmp)
    spec = {"layers": []}
    for arch in ARCHES:
        for name, dirs in per_arch[arch]:
            spec["layers"].append({"paths": [{"path": d, "options": options} for d in dirs],
                                   "out": os.path.join(tmp, name + ".tar")})
    with open(os.path.join(tmp, "spec.json"), "w") as f:
        json.dump(spec, f, indent=1)
    log("n2c: synthesising the layer tars with the Go generator")
    subprocess.run([gen, "layers", os.path.join(tmp, "spec.json"), os.path.join(tmp, "sums.json")], check=True)
    with open(os.path.join(tmp, "sums.json")) as f:
        sums = iter(json.load(f))

    info = {}
    for arch in ARCHES:
        layers = []
        for name, dirs in per_arch[arch]:
            s = next(sums)
            layers.append({"name": name, "digest": s["sha256"], "size": s["size"], "dirs": dirs,
                           "tar": os.path.join(tmp, name + ".tar")})
        app = os.path.join("/", os.path.relpath(per_arch[arch][-1][1][0], store_root), "bin", "app")
        image = {
            "version": 1,
            "image-config": {"Entrypoint": [app], "Env": ["PATH=/bin"],
                             "Labels": {"org.opencontainers.image.title": "manifold-bench-n2c"}},
            "layers": [{
                "digest": l["digest"], "size": l["size"], "diff_ids": l["digest"],
                "paths": [{"path": d, "options": options} for d in l["dirs"]],
                "mediatype": N2C_MEDIA_TYPE, "History": {"created_by": "nix2container"},
            } for l in layers],
            "arch": arch,
            "created": "0001-01-01T00:00:00Z",
        }
        with open(os.path.join(out_dir, "image-%s.json" % arch), "w") as f:
            f.write(json.dumps(image, indent="\t") + "\n")
        n2c_archive(os.path.join(out_dir, "archive-%s.tar" % arch), arch, image, layers)
        info[arch] = {"layers": [{"name": l["name"], "digest": l["digest"], "size": l["size"],
                                  "store_paths": len(l["dirs"])} for l in layers],
                      "uncompressed_bytes": sum(l["size"] for l in layers)}
        log("n2c %s: %d layers, %.1f MB" % (arch, len(layers), info[arch]["uncompressed_bytes"] / 1e6))
    import shutil
    shutil.rmtree(tmp)
    with open(meta_path + ".tmp", "w") as f:
        json.dump({"params": params, "store": store_root, "images": info}, f, indent=1)
    os.replace(meta_path + ".tmp", meta_path)
    total = sum(info[a]["uncompressed_bytes"] for a in ARCHES)
    log("nix2container fixture: %.1f MB of layers over both architectures, in %s" % (total / 1e6, out_dir))


def n2c_archive(path, arch, image, layers):
    """A docker-archive of the Go generator's layer tars (moved in, then deleted)."""
    config = json.dumps({
        "architecture": arch, "os": "linux", "created": image["created"],
        "config": image["image-config"],
        "rootfs": {"type": "layers", "diff_ids": [l["digest"] for l in layers]},
        "history": [{"created_by": "nix2container"} for _ in layers],
    }, sort_keys=True).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    names = []
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for l in layers:
            name = l["digest"].split(":", 1)[1] + "/layer.tar"
            names.append(name)
            with open(l["tar"], "rb") as f:
                tar.addfile(tar_info(name, size=os.fstat(f.fileno()).st_size), f)
            os.unlink(l["tar"])
        tar.addfile(tar_info(config_name, size=len(config)), io.BytesIO(config))
        manifest = json.dumps([{"Config": config_name, "RepoTags": ["manifold-bench-n2c:latest"],
                                "Layers": names}]).encode()
        tar.addfile(tar_info("manifest.json", size=len(manifest)), io.BytesIO(manifest))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("dir")
    b.add_argument("--layer-mb", type=int, default=100)
    b.add_argument("--random-mb", type=int, default=16)
    b.add_argument("--split", type=int, default=1,
                   help="cut each real layer into this many smaller ones (many-layer images)")
    s = sub.add_parser("stream")
    s.add_argument("dir")
    s.add_argument("image")
    t = sub.add_parser("tarballs", help="buildLayeredImage-style .tar.gz of each image (after build)")
    t.add_argument("dir")
    n = sub.add_parser("n2c")
    n.add_argument("dir")
    n.add_argument("--gen", required=True, help="the Go generator's directory (testdata/nix2container/gen)")
    n.add_argument("--layer-mb", type=int, default=60)
    n.add_argument("--random-mb", type=int, default=16)
    a = p.parse_args()
    if a.cmd == "build":
        build(a.dir, a.layer_mb, a.random_mb, a.split)
    elif a.cmd == "tarballs":
        tarballs(a.dir)
    elif a.cmd == "n2c":
        n2c_build(a.dir, a.gen, a.layer_mb, a.random_mb)
    else:
        try:
            stream(a.dir, a.image, sys.stdout.buffer)
        except BrokenPipeError:
            sys.exit(1)


if __name__ == "__main__":
    main()
