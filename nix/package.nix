# manifold, built from this repository's Cargo.lock.
#
# Used by the flake's `packages` and `overlays.default` (through callPackage,
# so an overlay builds it with the overlaid rustPlatform).
{ lib, rustPlatform, isa-l }:
let
  cargo = (builtins.fromTOML (builtins.readFile ../Cargo.toml)).package;
in
rustPlatform.buildRustPackage {
  pname = "manifold";
  inherit (cargo) version;
  src = lib.cleanSourceWith {
    src = lib.cleanSource ../.;
    # Docs, CI files and the Nix glue do not change the binary: leaving them
    # out keeps the build cached across documentation edits.
    filter =
      path: type:
      let
        rel = lib.removePrefix (toString ../. + "/") (toString path);
        top = builtins.head (lib.splitString "/" rel);
      in
      !(builtins.elem top [
        "docs"
        "nix"
        ".github"
        ".ci"
        "action.yml"
        "flake.nix"
        "flake.lock"
      ]);
  };
  cargoLock.lockFile = ../Cargo.lock;
  # The gzip encoder links Intel ISA-L (src/layer/isal.rs).
  buildInputs = [ isa-l ];
  # The integration tests start a real registry (docker-registry, skopeo):
  # `.ci/run` runs them; the build runs the unit tests.
  cargoTestFlags = [ "--lib" ];
  meta = {
    inherit (cargo) description;
    homepage = cargo.repository;
    license = with lib.licenses; [
      mit
      asl20
    ];
    mainProgram = "manifold";
  };
}
