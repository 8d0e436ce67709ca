# mkManifest: flocken-style options -> a runnable `manifold publish` wrapper.
#
# `pkgs` supplies writeShellScriptBin and coreutils; `package` is manifold
# itself (the flake passes its own build). The translation lives in
# nix/args.nix and the script text in nix/script.nix, both pure so CI tests
# them without nixpkgs. The wrapper reads the environment when it runs, so
# `nix run .#fdManifest` needs no `--impure`.
{ pkgs, package }:
options:
let
  args = import ./args.nix options;
  coreutils = pkgs.coreutils;
  manifold = options.package or package;
  name = options.name or "manifold-publish";
  text = import ./script.nix {
    manifold = "${manifold}/bin/manifold";
    base64 = "${coreutils}/bin/base64";
    mktemp = "${coreutils}/bin/mktemp";
    rm = "${coreutils}/bin/rm";
  } args;
in
(pkgs.writeShellScriptBin name text)
// {
  # What the wrapper will run, for `nix eval .#fdManifest.manifoldArgs`.
  manifoldArgs = args.argv;
}
