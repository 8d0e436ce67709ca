#!/usr/bin/env bash
# bench/run.sh: time `manifold publish` against the skopeo route and flocken's
# podman pipeline, on the same two-architecture image, against a local registry.
#
# Runs as root on Debian 12 or later. Installs with apt-get whatever is
# missing: docker-registry, skopeo, podman, time (GNU), gzip, python3,
# util-linux (unshare). Builds target/release/manifold with
# `cargo build --release` when it is missing (or always with --build). Builds
# the fixture (about 665 MB of layers) once into bench/.cache/fixture.
# Network: 127.0.0.1 only, apart from apt-get and cargo.
#
#   bench/run.sh [--runs N] [--tools manifold,skopeo,flocken] [--build]
#                [--layer-mb MB] [--random-mb MB] [--split K] [--tarballs] [--keep] [--timeout S]
#                [--manifold PATH] [--n2c] [--n2c-only] [--n2c-runs N]
#                [--n2c-layer-mb MB]
#                [--image PATH --image PATH ... [--changed-image PATH ...]]
#
# --split K cuts each real layer into K smaller ones: with 33, each
# architecture has 100 layers of about 3 MB, the shape of a streamLayeredImage
# of many store paths (its own fixture, bench/.cache/fixture-split33).
# --tarballs publishes buildLayeredImage-style .tar.gz files (each stream
# through `pigz -nTR`, made once next to the streams) instead of the streams
# (installs pigz; results in results-tarballs.json).
# --n2c adds the nix2container scenario (cold, rerun from a fresh runner with
# the store moved away) on a fake store of about 420 MB (bench/.cache/n2c;
# needs Go, installs golang-go); --n2c-only runs just that one.
# --image PATH (repeatable, one per platform) publishes your own images
# instead of the fixture: streamLayeredImage scripts or docker-archives
# (.tar, .tar.gz); --changed-image PATH (same count and order) gives their
# variants for the changed scenario, skipped without them. Not with
# --tarballs, --split or --n2c-only; results in results-images.json.
# Output: one table per scenario (cold, rerun, changed) on stdout, and
# bench/.cache/results.json. See bench/README.md.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
cache="$here/.cache"

runs=3
tools="manifold,skopeo,flocken"
layer_mb=100
random_mb=16
split=1
tarballs=0
build=0
manifold="$root/target/release/manifold"
n2c=0
n2c_layer_mb=60
extra=()
images=()  # --image/--changed-image pairs for bench.py, paths absolute
has_image=0

usage() { sed -n '2,33p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        --tools) tools="$2"; shift 2 ;;
        --layer-mb) layer_mb="$2"; shift 2 ;;
        --random-mb) random_mb="$2"; shift 2 ;;
        --split) split="$2"; shift 2 ;;
        --tarballs) tarballs=1; extra+=(--tarballs); shift ;;
        --build) build=1; shift ;;
        --keep) extra+=(--keep); shift ;;
        --timeout) extra+=(--timeout "$2"); shift 2 ;;
        --manifold) manifold="$(realpath "$2")"; shift 2 ;;
        --n2c) n2c=1; shift ;;
        --n2c-only) n2c=1; extra+=(--n2c-only); shift ;;
        --n2c-runs) extra+=(--n2c-runs "$2"); shift 2 ;;
        --n2c-layer-mb) n2c_layer_mb="$2"; shift 2 ;;
        --image|--changed-image)
            if [ $# -lt 2 ] || [ ! -e "$2" ]; then
                echo "error: $1: no such file \`${2-}\`" >&2; exit 2
            fi
            if [ "$1" = --image ]; then has_image=1; fi
            # -s: a Nix result link stays as named (bench.py records where it points).
            images+=("$1" "$(realpath -s "$2")"); shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown argument \`$1\`" >&2; usage >&2; exit 2 ;;
    esac
done

if [ ${#images[@]} -gt 0 ]; then
    # Each image's kind is read from the file; the fixture's knobs do not apply.
    conflict=""
    if [ "$tarballs" = 1 ]; then conflict=--tarballs; fi
    if [ "$split" != 1 ]; then conflict=--split; fi
    case " ${extra[*]-} " in *" --n2c-only "*) conflict=--n2c-only ;; esac
    if [ "$has_image" = 0 ]; then
        echo "error: --changed-image needs --image" >&2; exit 2
    elif [ -n "$conflict" ]; then
        echo "error: --image cannot be combined with $conflict" >&2; exit 2
    fi
fi

if [ "$(id -u)" != 0 ]; then
    echo "error: run as root (podman with private storage and a private mount namespace need it)" >&2
    exit 2
fi

# command -> Debian package
need=()
for pair in docker-registry:docker-registry skopeo:skopeo podman:podman /usr/bin/time:time \
            gzip:gzip python3:python3 unshare:util-linux; do
    cmd="${pair%%:*}" pkg="${pair#*:}"
    command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
if [ "$tarballs" = 1 ] && ! command -v pigz >/dev/null 2>&1; then
    need+=(pigz)
fi
if [ "$n2c" = 1 ] && ! command -v go >/dev/null 2>&1; then
    need+=(golang-go)
fi
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi

cd "$root"
case ",$tools," in
    *,manifold,*)
        if [ "$build" = 1 ] || [ ! -x "$manifold" ]; then
            echo "building manifold (cargo build --release)" >&2
            cargo build --release --quiet
        fi ;;
esac

mkdir -p "$cache"
fixture="$cache/fixture" results="$cache/results.json"
if [ "$split" != 1 ]; then
    fixture="$cache/fixture-split$split" results="$cache/results-split$split.json"
fi
if [ "$tarballs" = 1 ]; then
    results="${results%.json}-tarballs.json"
fi
if [ ${#images[@]} -gt 0 ]; then
    results="$cache/results-images.json"
fi
case "$has_image ${extra[*]-} " in
    1*|*" --n2c-only "*) ;;  # no fixture to build
    *) python3 "$here/make_fixture.py" build "$fixture" --layer-mb "$layer_mb" --random-mb "$random_mb" \
           --split "$split"
       if [ "$tarballs" = 1 ]; then
           python3 "$here/make_fixture.py" tarballs "$fixture"
       fi ;;
esac
if [ "$n2c" = 1 ]; then
    python3 "$here/make_fixture.py" n2c "$cache/n2c" --gen "$root/testdata/nix2container/gen" \
        --layer-mb "$n2c_layer_mb" --random-mb "$random_mb"
    extra+=(--n2c "$cache/n2c")
fi

exec python3 "$here/bench.py" --runs "$runs" --tools "$tools" \
    --fixture "$fixture" --work "$cache/work" --out "$results" \
    --manifold "$manifold" ${extra[@]+"${extra[@]}"} ${images[@]+"${images[@]}"}
