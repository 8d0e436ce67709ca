#!/usr/bin/env bash
# Runs the `Publish` step of action.yml (its script, taken from the YAML)
# against a fake manifold, the way the runner would: inputs arrive as the
# step's `IN_*` variables. Checks the arguments built from the inputs and that
# the password reaches manifold on stdin, not on its command line.
# Needs ruamel.yaml (installed with check-jsonschema by .ci/run).
# Backticks in patterns are literal; `grep && pass || fail` is meant.
# shellcheck disable=SC2016,SC2015
set -euo pipefail
cd "$(dirname "$0")/../.."

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin"
cat >"$work/bin/manifold" <<'FAKE'
#!/usr/bin/env bash
printf '%s\n' "$@" >"$FAKE_OUT/argv"
cat >"$FAKE_OUT/stdin"
FAKE
chmod +x "$work/bin/manifold"

python3 - "$work/publish.sh" <<'PY'
import sys
from ruamel.yaml import YAML
action = YAML(typ="safe").load(open("action.yml"))
steps = [s for s in action["runs"]["steps"] if s.get("id") == "publish"]
assert len(steps) == 1, "action.yml has no step with id `publish`"
env = steps[0]["env"]
# Every input reaches the script through the environment, never inline.
assert "${{" not in steps[0]["run"], "an expression is expanded inside the script"
assert env.get("IN_PASSWORD") == "${{ inputs.password }}", env.get("IN_PASSWORD")
open(sys.argv[1], "w").write(steps[0]["run"])
PY

passed=0
failures=0
fail() { echo "FAIL action-test: $*" >&2; failures=$((failures + 1)); }
expect_eq() {
  if [[ $2 == "$3" ]]; then passed=$((passed + 1)); else fail "$1"$'\n'"  expected: $2"$'\n'"  got:      $3"; fi
}

# Defaults of action.yml's inputs, as the runner would pass them.
defaults=(IN_INPUTS= IN_REPO= IN_TAGS= IN_VERSION= IN_BRANCH= IN_DEFAULT_BRANCH= IN_AUTO_TAGS=
  IN_LATEST=auto IN_NO_TAGS=false IN_ANNOTATIONS= IN_COMPRESSION=gzip IN_USERNAME= IN_PASSWORD= IN_ARGS=)
run() {
  out=$(mktemp -d -p "$work")
  status=0
  env -i PATH="$work/bin:/usr/bin:/bin" FAKE_OUT="$out" "${defaults[@]}" "$@" \
    bash "$work/publish.sh" </dev/null >"$out/stdout" 2>&1 || status=$?
}
argv() { paste -sd'|' "$out/argv"; }

run IN_INPUTS=$'./image-amd64\naarch64-linux=./image-arm64\n'
expect_eq "defaults: status" 0 "$status"
expect_eq "defaults: argv" "publish|--latest|auto|--compression|gzip|--|./image-amd64|aarch64-linux=./image-arm64" "$(argv)"

run IN_INPUTS='./a ./b' IN_REPO=$'ghcr.io/acme/fd\n docker.io/acme/fd' IN_TAGS=$'nightly, edge\nx' \
  IN_VERSION=v1.2.3 IN_BRANCH=main IN_DEFAULT_BRANCH=trunk IN_AUTO_TAGS=none IN_LATEST=never IN_NO_TAGS=false \
  IN_ANNOTATIONS=$'org.opencontainers.image.title=fd finder\n\norg.opencontainers.image.url=' \
  IN_COMPRESSION=zstd IN_ARGS=$'--jobs\n2' IN_USERNAME=acme IN_PASSWORD='s3cret pass'
expect_eq "all inputs: status" 0 "$status"
expect_eq "all inputs: argv" \
  "publish|--repo|ghcr.io/acme/fd|--repo|docker.io/acme/fd|--tag|nightly|--tag|edge|--tag|x|--version|v1.2.3|--branch|main|--default-branch|trunk|--no-auto-tags|--latest|never|--compression|zstd|--annotation|org.opencontainers.image.title=fd finder|--annotation|org.opencontainers.image.url=|--jobs|2|--username|acme|--password-stdin|--|./a|./b" \
  "$(argv)"
expect_eq "all inputs: the password is on stdin" "s3cret pass" "$(cat "$out/stdin")"
if grep -qF 's3cret' "$out/argv"; then fail "the password is on the command line"; else passed=$((passed + 1)); fi

run IN_INPUTS=./a IN_AUTO_TAGS=branch,sha IN_NO_TAGS=true
expect_eq "auto-tags list, no-tags: argv" "publish|--auto-tags|branch,sha|--latest|auto|--compression|gzip|--no-tags|--|./a" "$(argv)"

run IN_INPUTS=./a IN_USERNAME=acme
expect_eq "username without password: usage error" 2 "$status"
expect_eq "username without password: manifold not run" no "$([[ -e $out/argv ]] && echo yes || echo no)"

run IN_INPUTS=$'\n  \n'
expect_eq "no inputs: usage error" 2 "$status"

run IN_INPUTS=./a IN_TAGS='$(touch pwned) `touch pwned`'
expect_eq "metacharacters stay literal" "publish|--tag|\$(touch|--tag|pwned)|--tag|\`touch|--tag|pwned\`|--latest|auto|--compression|gzip|--|./a" "$(argv)"
expect_eq "nothing was executed" no "$([[ -e pwned || -e $out/pwned ]] && echo yes || echo no)"

echo "action-test: $passed passed, $failures failed"
((failures == 0))
