# The body of mkManifest's wrapper: a bash script that expands the run-time
# variables named in the options, hands credentials to manifold without ever
# putting a secret on a command line or in the Nix store, and runs
# `manifold publish`.
#
# Pure (builtins only) like nix/args.nix, so tests/nix can render it offline
# and run it against a stand-in manifold. nix/manifest.nix wraps it with
# nixpkgs' writeShellScriptBin.
{
  # Absolute paths of the programs the script runs.
  manifold,
  base64 ? "base64",
  mktemp ? "mktemp",
  rm ? "rm",
}:
# The result of nix/args.nix.
args:
let
  inherit (builtins)
    concatStringsSep
    elemAt
    genList
    head
    isList
    isString
    length
    map
    match
    replaceStrings
    split
    toJSON
    ;

  # One shell word, double-quoted. Variable references the options may use
  # (`$NAME`, `${NAME}`, `${NAME,,}`, `${NAME:-default}` with a plain default)
  # stay live; every other `$`, `` ` ``, `"` and `\` is literal.
  refRegex = "(\\$[A-Za-z_][A-Za-z0-9_]*|\\$\\{[A-Za-z_][A-Za-z0-9_]*(,,|:-[A-Za-z0-9._/@+-]*)?})";
  escape = replaceStrings [ "\\" "\"" "`" "$" ] [ "\\\\" "\\\"" "\\`" "\\$" ];
  word =
    s:
    "\""
    + concatStringsSep "" (
      map (part: if isList part then head part else escape part) (split refRegex s)
    )
    + "\"";

  # A fully literal word (paths, names): single quotes.
  literal = s: "'" + replaceStrings [ "'" ] [ "'\\''" ] s + "'";

  optionLine =
    o:
    if length o == 1 then
      "args+=(${word (head o)})"
    else
      "opt ${literal (head o)} ${word (elemAt o 1)}";

  credentialLines =
    if args.credentialMode == "none" then
      [ ]
    else if args.credentialMode == "stdin" then
      let
        c = head args.credentials;
      in
      [
        (need c.passwordVar "the password of registry `${c.registry}`")
        "args+=(--username ${word c.username} --password-stdin)"
      ]
    else
      map (c: need c.passwordVar "the password of registry `${c.registry}`") args.credentials
      ++ [
        # mktemp makes the file 0600; the trap removes it however the run ends.
        "REGISTRY_AUTH_FILE=$(${mktemp})"
        "trap '${rm} -f \"$REGISTRY_AUTH_FILE\"' EXIT"
        "export REGISTRY_AUTH_FILE"
        "{"
        "  printf '{\"auths\":{'"
      ]
      ++ genList (
        i:
        let
          c = elemAt args.credentials i;
          sep = if i == 0 then "" else ",";
        in
        # printf is a bash builtin: the password is on no process's command line.
        "  printf '%s%s:{\"auth\":\"%s\"}' ${literal sep} ${literal (toJSON c.registry)} \"$(printf '%s:%s' ${word c.username} \"\${${c.passwordVar}}\" | ${base64} -w0)\""
      ) (length args.credentials)
      ++ [
        "  printf '}}\\n'"
        "} >\"$REGISTRY_AUTH_FILE\""
      ];

  need =
    var: what:
    "if [[ -z \${${var}:-} ]]; then echo ${literal "mkManifest: \`${var}\` is not set; it holds ${what}"} >&2; exit 2; fi";

  run =
    if args.credentialMode == "stdin" then
      "printf '%s\\n' \"\${${(head args.credentials).passwordVar}}\" | ${literal manifold} \"\${args[@]}\""
    else if args.credentialMode == "authfile" then
      # Not exec: the trap must still remove the auth file.
      "${literal manifold} \"\${args[@]}\""
    else
      "exec ${literal manifold} \"\${args[@]}\"";

  lines = [
    # Not `set -u`: an unset `$VERSION` must expand to nothing, and then
    # `opt` leaves the option out.
    "set -eo pipefail"
    "# Written by manifold's mkManifest: variables are read now, when it runs."
    # Backticks in messages are Markdown, not command substitution.
    "# shellcheck disable=SC2016"
    "args=(publish)"
    "opt() { if [[ -n $2 ]]; then args+=(\"$1\" \"$2\"); fi; }"
  ]
  ++ map (n: "echo ${literal "mkManifest: ${n}"} >&2") args.notes
  ++ map (r: need r.var r.what) (args.required or [ ])
  ++ map optionLine args.options
  ++ credentialLines
  ++ [ "args+=(--)" ]
  ++ map (i: "args+=(${literal i})") args.inputs
  ++ [ run ];
in
assert isString manifold;
concatStringsSep "\n" lines + "\n"
