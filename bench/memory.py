#!/usr/bin/env python3
"""bench/memory.py: peak memory of `manifold publish` where it could grow.

The goal (issue #4) is a peak under 100 MiB whatever the layer size. This
script checks the three shapes that could break it, each against a fresh
local registry (127.0.0.1 only), and prints manifold's peak RSS (GNU time's
maximum resident set size) beside the limit:

  big-layer     one stream input whose only layer is --big-mib (1024) MiB
  many-inputs   --inputs (12) stream inputs at once, --input-mib (80) MiB
                each, every one its own platform, in one index
  batch         the same inputs as --inputs images of a `--config` batch
  n2c-inputs    with --n2c DIR (the fixture `run.sh --n2c` builds, in
                bench/.cache/n2c): --inputs nix2container inputs at once,
                its two image.json files taking turns, in one index

The inputs are stream scripts, like streamLayeredImage: a docker-archive on
stdout, layers first, then the config, then manifest.json. Their layers hold
base64 text of random bytes (gzip ratio about 0.75), different per input, so
nothing is shared or skipped. Nothing is written to disk but the registry.

    python3 bench/memory.py [--manifold PATH] [--big-mib N] [--inputs N]
                            [--input-mib N] [--limit-mib N] [--n2c DIR]

Exits 1 if any run fails or peaks over --limit-mib (100).
"""

import argparse
import base64
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import Registry  # noqa: E402

MIB = 1 << 20
POOL_MIB = 8
PLATFORMS = [
    "linux/amd64", "linux/arm64", "linux/arm/v7", "linux/ppc64le", "linux/s390x",
    "linux/386", "linux/riscv64", "linux/mips64le", "linux/arm/v6", "linux/loong64",
    "linux/mips64", "linux/arm/v5",
]


def header(name, size):
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    return info.tobuf(format=tarfile.GNU_FORMAT)


def stream(seed, mib, arch, out):
    """Writes a one-layer docker-archive of `mib` MiB of layer data to `out`."""
    rng = random.Random(seed)
    # base64 of random bytes: compressible like text, never repeating
    # within deflate's window.
    pool = base64.b64encode(rng.randbytes(POOL_MIB * MIB * 3 // 4))
    data_size = mib * MIB
    member_header = header("data.bin", data_size)
    end = b"\0" * 1024
    layer_size = len(member_header) + data_size + len(end)
    digest = hashlib.sha256()

    def emit(b, into_layer=True):
        out.write(b)
        if into_layer:
            digest.update(b)

    # The docker-archive member name need not be the digest (docker save
    # writes any directory name): the layer is streamed before it is known.
    out.write(header("layer0/layer.tar", layer_size))
    emit(member_header)
    for i in range(mib):
        start = (i * 7919 * 64) % (len(pool) - MIB)
        emit(pool[start:start + MIB])
    emit(end)
    config = json.dumps({
        "architecture": arch.split("/")[1], "os": "linux",
        **({"variant": arch.split("/")[2]} if arch.count("/") == 2 else {}),
        "config": {}, "rootfs": {"type": "layers", "diff_ids": ["sha256:" + digest.hexdigest()]},
    }).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": ["memory:latest"],
                            "Layers": ["layer0/layer.tar"]}]).encode()
    for name, body in ((config_name, config), ("manifest.json", manifest)):
        out.write(header(name, len(body)))
        out.write(body)
        out.write(b"\0" * (-len(body) % 512))
    out.write(b"\0" * 1024)
    out.flush()


def write_stream_script(path, seed, mib, arch):
    with open(path, "w") as f:
        f.write("#!/usr/bin/env python3\nimport sys\nsys.dont_write_bytecode = True\n"
                "sys.path.insert(0, %r)\nimport memory\nmemory.stream(%d, %d, %r, sys.stdout.buffer)\n"
                % (os.path.dirname(os.path.abspath(__file__)), seed, mib, arch))
    os.chmod(path, 0o755)


def run(manifold, registry, work, name, args):
    """One publish against a fresh registry; returns (ok, wall s, peak RSS MiB)."""
    registry.start(name)
    try:
        env = dict(os.environ, XDG_CACHE_HOME=os.path.join(work, "xdg-" + name),
                   TMPDIR=work)
        env = {k: v for k, v in env.items() if not k.startswith("GITHUB_") and k != "CI"}
        timefile = os.path.join(work, "time-" + name)
        cmd = ["/usr/bin/time", "-f", "%e %M", "-o", timefile, manifold, "publish", "-q",
               "--no-auto-tags", "--tag", "v1"] + args(registry.host)
        proc = subprocess.run(cmd, env=env, cwd=work, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        with open(timefile) as f:
            wall, rss_kib = f.read().split("\n")[-2].split()
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-2000:])
        return proc.returncode == 0, float(wall), int(rss_kib) / 1024
    finally:
        registry.stop()


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifold", default=os.path.join(here, "..", "target", "release", "manifold"))
    p.add_argument("--big-mib", type=int, default=1024)
    p.add_argument("--inputs", type=int, default=12)
    p.add_argument("--input-mib", type=int, default=80)
    p.add_argument("--limit-mib", type=int, default=100)
    p.add_argument("--n2c", metavar="DIR",
                   help="a nix2container fixture (image-amd64.json, image-arm64.json)")
    a = p.parse_args()
    if a.inputs > len(PLATFORMS):
        p.error("--inputs: at most %d (one platform each)" % len(PLATFORMS))
    registry_bin = shutil.which("docker-registry")
    if not registry_bin:
        raise SystemExit("docker-registry is not installed (apt-get install docker-registry)")
    manifold = os.path.abspath(a.manifold)
    if not os.access(manifold, os.X_OK):
        raise SystemExit("no manifold binary at %s: run `cargo build --release` first, "
                         "or pass --manifold PATH" % manifold)
    n2c_images = []
    if a.n2c:
        n2c_images = [os.path.abspath(os.path.join(a.n2c, "image-%s.json" % arch))
                      for arch in ("amd64", "arm64")]
        for path in n2c_images:
            if not os.path.isfile(path):
                raise SystemExit("--n2c: no %s (build the fixture with `bench/run.sh --n2c-only`)"
                                 % path)
    work = tempfile.mkdtemp(prefix="manifold-memory-")
    try:
        big = os.path.join(work, "stream-big")
        write_stream_script(big, 1, a.big_mib, "linux/amd64")
        small = []
        for i in range(a.inputs):
            path = os.path.join(work, "stream-%d" % i)
            write_stream_script(path, 100 + i, a.input_mib, PLATFORMS[i])
            small.append((PLATFORMS[i], path))
        with open(os.path.join(work, "batch.toml"), "w") as f:
            for i, (platform, path) in enumerate(small):
                f.write('[[image]]\nrepo = "REGISTRY/memory/img%d"\ninputs = ["%s=%s"]\n\n'
                        % (i, platform, path))

        def batch_args(host):
            batch = os.path.join(work, "batch-%s.toml" % host.replace(":", "-"))
            with open(os.path.join(work, "batch.toml")) as src, open(batch, "w") as dst:
                dst.write(src.read().replace("REGISTRY", host))
            return ["--config", batch]

        scenarios = [
            ("big-layer", "1 input, one %d MiB layer" % a.big_mib,
             lambda host: ["--repo", host + "/memory/big", "linux/amd64=" + big]),
            ("many-inputs", "%d inputs of %d MiB in one index" % (a.inputs, a.input_mib),
             lambda host: ["--repo", host + "/memory/all"] + ["%s=%s" % s for s in small]),
            ("batch", "%d images of %d MiB (--config)" % (a.inputs, a.input_mib), batch_args),
        ]
        if n2c_images:
            n2c_inputs = ["%s=%s" % (PLATFORMS[i], n2c_images[i % 2]) for i in range(a.inputs)]
            scenarios.append(
                ("n2c-inputs", "%d nix2container inputs in one index" % a.inputs,
                 lambda host: ["--repo", host + "/memory/n2c"] + n2c_inputs))
        failed = False
        print("%-12s %-36s %8s %10s  %s" % ("scenario", "shape", "wall", "peak RSS", "limit"))
        for name, shape, args in scenarios:
            registry = Registry(registry_bin, os.path.join(work, "registry-" + name), work)
            ok, wall, rss = run(manifold, registry, work, name, args)
            within = ok and rss <= a.limit_mib
            failed |= not within
            if ok:
                print("%-12s %-36s %7.1fs %7.0f MiB  %s" % (
                    name, shape, wall, rss,
                    ("within %d MiB" % a.limit_mib) if within else "OVER %d MiB" % a.limit_mib))
            else:
                print("%-12s %-36s %8s %11s  FAILED (manifold's error above)" % (name, shape, "-", "-"))
            shutil.rmtree(os.path.join(work, "registry-" + name), ignore_errors=True)
        sys.exit(1 if failed else 0)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
