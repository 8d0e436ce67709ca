#!/usr/bin/env bash
# Runs the wrapper that `lib.mkManifest` makes (rendered by wrapper.nix with
# stand-ins for nixpkgs) against a fake manifold that records its arguments,
# its stdin and the auth file it was handed, and checks them: options expand
# at run time, secrets reach manifold only through stdin or a temporary 0600
# auth file that is removed afterwards, never through its command line.
# Backticks in patterns are literal; `grep && pass || fail` is meant.
# shellcheck disable=SC2016,SC2015
set -euo pipefail
cd "$(dirname "$0")/../.."

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fake=$work/fake
mkdir -p "$fake/bin"
cat >"$fake/bin/manifold" <<'FAKE'
#!/usr/bin/env bash
out=$FAKE_OUT
printf '%s\n' "$@" >"$out/argv"
cat >"$out/stdin"
if [[ -n ${REGISTRY_AUTH_FILE:-} ]]; then
  cp "$REGISTRY_AUTH_FILE" "$out/auth"
  stat -c %a "$REGISTRY_AUTH_FILE" >"$out/auth-mode"
  printf '%s' "$REGISTRY_AUTH_FILE" >"$out/auth-path"
fi
exit "${FAKE_STATUS:-0}"
FAKE
chmod +x "$fake/bin/manifold"

failures=0
passed=0
fail() { echo "FAIL wrapper-test: $*" >&2; failures=$((failures + 1)); }
expect_eq() { # name expected actual
  if [[ $2 == "$3" ]]; then passed=$((passed + 1)); else fail "$1"$'\n'"  expected: $2"$'\n'"  got:      $3"; fi
}

render() { # case -> script path
  nix-instantiate --store dummy:// --eval --strict --json \
    --argstr fake "$fake" --argstr case "$1" tests/nix/wrapper.nix |
    python3 -c 'import json, sys; sys.stdout.write(json.load(sys.stdin))' >"$work/$1.sh"
  echo "$work/$1.sh"
}

run() { # script, then env assignments; sets status and out
  local script=$1
  shift
  out=$(mktemp -d -p "$work")
  status=0
  (cd "$out" && env -i PATH=/usr/bin:/bin FAKE_OUT="$out" "$@" bash "$script") </dev/null 2>"$out/stderr" || status=$?
}

stream=/nix/store/0000000000000000000000000000000a-fd-stream

# --- one registry: the token goes to --password-stdin ---
s=$(render stdin)
run "$s" GITHUB_TOKEN=gh-secret-1 GITHUB_REPOSITORY=Acme/FD GITHUB_ACTOR=octo
expect_eq "stdin: exit status" 0 "$status"
expect_eq "stdin: argv (repository lower-cased, no --version when VERSION is unset)" \
  "publish --repo ghcr.io/acme/fd --username octo --password-stdin -- stream:$stream" \
  "$(tr '\n' ' ' <"$out/argv" | sed 's/ $//')"
expect_eq "stdin: the token arrives on stdin" "gh-secret-1" "$(cat "$out/stdin")"
expect_eq "stdin: no auth file" "no" "$([[ -e $out/auth ]] && echo yes || echo no)"

run "$s" GITHUB_TOKEN=gh-secret-1
expect_eq "stdin: GITHUB_REPOSITORY missing stops the run" 2 "$status"
expect_eq "stdin: manifold was not run" "no" "$([[ -e $out/argv ]] && echo yes || echo no)"
grep -q 'GITHUB_REPOSITORY.*is not set' "$out/stderr" && passed=$((passed + 1)) || fail "stdin: message names GITHUB_REPOSITORY: $(cat "$out/stderr")"

run "$s" GITHUB_REPOSITORY=acme/fd
expect_eq "stdin: GITHUB_TOKEN missing stops the run" 2 "$status"
grep -q '`GITHUB_TOKEN` is not set' "$out/stderr" && passed=$((passed + 1)) || fail "stdin: message names GITHUB_TOKEN: $(cat "$out/stderr")"

# --- two registries: a temporary auth file ---
s=$(render authfile)
run "$s" DOCKERHUB_TOKEN='dh:secret"2' QUAY_USER='acme+bot' QUAY_TOKEN=quay-secret-3 VERSION=v1.2.3
expect_eq "authfile: exit status" 0 "$status"
expect_eq "authfile: argv" \
  "publish --repo docker.io/acme/fd --repo quay.io/acme/fd --version v1.2.3 -- aarch64-linux=stream:$stream" \
  "$(tr '\n' ' ' <"$out/argv" | sed 's/ $//')"
expect_eq "authfile: auth file content" \
  '{"docker.io": "acme:dh:secret\"2", "quay.io": "acme+bot:quay-secret-3"}' \
  "$(python3 -c '
import base64, json, sys
auths = json.load(open(sys.argv[1]))["auths"]
print(json.dumps({k: base64.b64decode(v["auth"]).decode() for k, v in sorted(auths.items())}))' "$out/auth")"
expect_eq "authfile: mode 600" 600 "$(cat "$out/auth-mode")"
expect_eq "authfile: removed after the run" "no" "$([[ -e $(cat "$out/auth-path") ]] && echo yes || echo no)"
expect_eq "authfile: nothing on stdin" "" "$(cat "$out/stdin")"

run "$s" DOCKERHUB_TOKEN=a QUAY_USER=b QUAY_TOKEN=c FAKE_STATUS=1
expect_eq "authfile: manifold's failure is the wrapper's" 1 "$status"
expect_eq "authfile: removed after a failed run" "no" "$([[ -e $(cat "$out/auth-path") ]] && echo yes || echo no)"

run "$s" DOCKERHUB_TOKEN=a QUAY_USER=b
expect_eq "authfile: a missing password stops the run" 2 "$status"
grep -q '`QUAY_TOKEN` is not set' "$out/stderr" && passed=$((passed + 1)) || fail "authfile: message names QUAY_TOKEN: $(cat "$out/stderr")"

# No secret is in any rendered script (they are in the Nix store).
for secret in gh-secret-1 'dh:secret' quay-secret-3; do
  if grep -rqF -- "$secret" "$work"/*.sh; then fail "a secret is in a rendered script"; else passed=$((passed + 1)); fi
done

# --- values are literal except for variable names ---
s=$(render quoting)
run "$s" TAG_FROM_ENV=from-env
expect_eq "quoting: exit status" 0 "$status"
expect_eq "quoting: argv" \
  "publish|--repo|localhost:5000/fd|--tag|\$(touch pwned)|--tag|\`touch pwned\`|--tag|a\"b'c\\d|--tag|from-env|--tag|\$|--|archive:$stream" \
  "$(paste -sd'|' "$out/argv")"
expect_eq "quoting: nothing was executed" "no" "$([[ -e $out/pwned ]] && echo yes || echo no)"

echo "wrapper-test: $passed passed, $failures failed"
((failures == 0))
