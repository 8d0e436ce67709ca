# The wrapper script that the flake's `lib.mkManifest` makes, evaluated with
# stand-ins for nixpkgs (no network, no store) so wrapper-test.sh can run it
# against a fake manifold. Goes through flake.nix itself, so its wiring is
# tested too.
#   nix-instantiate --store dummy:// --eval --strict --json \
#     --argstr fake /tmp/x --argstr case stdin tests/nix/wrapper.nix
{ fake, case }:
let
  systems = [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ];
  genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
  stubPkgs = {
    stdenv.hostPlatform.system = "x86_64-linux";
    coreutils = "/usr";
    writeShellScriptBin = name: text: { inherit name text; };
    callPackage = _: _: throw "the package is not built in this test";
  };
  nixpkgs = {
    lib = { inherit genAttrs; };
    legacyPackages = genAttrs systems (_: stubPkgs);
  };
  flake = (import ../../flake.nix).outputs {
    self = flake;
    inherit nixpkgs;
  };
  stream = "/nix/store/0000000000000000000000000000000a-fd-stream";

  cases = {
    # One registry with credentials: the token goes to --password-stdin.
    stdin = {
      github.enable = true;
      imageStreams = [ stream ];
    };
    # Two registries: a temporary auth file.
    authfile = {
      imageStreams.aarch64-linux = stream;
      version = "$VERSION";
      registries = {
        "docker.io" = {
          repo = "acme/fd";
          username = "acme";
          password = "$DOCKERHUB_TOKEN";
        };
        "quay.io" = {
          repo = "acme/fd";
          username = "$QUAY_USER";
          password = "\${QUAY_TOKEN}";
        };
      };
    };
    # Shell metacharacters in values are literal; `$NAME` is live.
    quoting = {
      imageFiles = [ stream ];
      registries."localhost:5000".repo = "fd";
      tags = [
        "$(touch pwned)"
        "`touch pwned`"
        "a\"b'c\\d"
        "$TAG_FROM_ENV"
        "$"
      ];
    };
  };
in
(flake.lib.mkManifest (
  {
    pkgs = stubPkgs;
    package = fake;
    name = "fdManifest";
  }
  // cases.${case}
)).text
