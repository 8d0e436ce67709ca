{
  description = "manifold: publish multi-architecture container images built by Nix";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
        "x86_64-darwin"
        "aarch64-darwin"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      systemOf = pkgs: pkgs.stdenv.hostPlatform.system;
      mkManifestFor =
        pkgs:
        import ./nix/manifest.nix {
          inherit pkgs;
          package = self.packages.${systemOf pkgs}.default;
        };
    in
    {
      packages = forAllSystems (pkgs: {
        default = pkgs.callPackage ./nix/package.nix { };
      });

      apps = forAllSystems (pkgs: {
        default = {
          type = "app";
          program = "${self.packages.${systemOf pkgs}.default}/bin/manifold";
        };
      });

      overlays.default = final: prev: {
        manifold = final.callPackage ./nix/package.nix { };
      };

      # `mkManifest { pkgs = …; imageStreams = …; github.enable = true; }`:
      # flocken's mkDockerManifest options, returning a wrapper that runs
      # `manifold publish` and reads the environment when it runs (no
      # `--impure`). See docs/migrating.md and docs/example/flake.nix.
      lib.mkManifest = { pkgs, ... }@options: mkManifestFor pkgs (removeAttrs options [ "pkgs" ]);

      # Where flocken users find mkDockerManifest: `legacyPackages.${system}.mkManifest`.
      legacyPackages = forAllSystems (pkgs: {
        mkManifest = mkManifestFor pkgs;
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${systemOf pkgs}.default ];
          packages = with pkgs; [
            cargo
            rustc
            rustfmt
            clippy
            skopeo
            distribution
            apacheHttpd
            python3
            nix
            actionlint
            check-jsonschema
          ];
        };
      });
    };
}
