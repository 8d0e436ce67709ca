# manifold's own image, from a static musl binary built outside Nix (the
# release workflow's `cargo build --target *-linux-musl`), for one
# architecture. The stream script runs on the build machine whatever
# `architecture` is: only the binary inside is foreign, so one x86_64 runner
# makes both images. Used by .github/workflows/release.yml:
#   nix build --impure --expr 'import ./nix/release-image.nix { pkgs = …; binary = /abs/path; architecture = "arm64"; }'
{
  pkgs,
  # Path of the static binary.
  binary,
  # OCI architecture: amd64 or arm64.
  architecture,
  tag ? "latest",
}:
let
  # runCommand has no fixup phase: nothing patches or strips the binary,
  # which may be for another architecture.
  bin = pkgs.runCommand "manifold-static-${architecture}" { } ''
    install -Dm755 ${binary} $out/bin/manifold
  '';
in
pkgs.dockerTools.streamLayeredImage {
  name = "manifold";
  inherit tag architecture;
  contents = [
    bin
    pkgs.cacert
  ];
  # Compressed layers are spooled to $TMPDIR while they upload.
  extraCommands = "mkdir -m 1777 tmp";
  config = {
    Entrypoint = [ "/bin/manifold" ];
    Env = [
      "SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt"
      "TMPDIR=/tmp"
    ];
  };
}
