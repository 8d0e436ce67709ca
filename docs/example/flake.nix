# fd and ripgrep as two-architecture images built with nix2container, each
# with a manifest wrapper: `nix run .#fdManifest` publishes
# ghcr.io/<owner>/<repo>/fd with the tags of the run (see docs/github-actions.md).
# The aarch64 images are built by an aarch64 builder (a native runner, or
# binfmt/qemu with `extra-platforms = aarch64-linux`).
# Note: manifold reads nix2container's image.json, but `publish` takes it only
# once that input is wired in (today: "nix2container inputs are not supported
# yet"); `dockerTools.streamLayeredImage` images work now, via `imageStreams`.
{
  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    nix2container = {
      url = "github:nlewo/nix2container";
      inputs.nixpkgs.follows = "nixpkgs";
    };
    manifold = {
      url = "github:manifold-oci/manifold";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs =
    {
      self,
      nixpkgs,
      nix2container,
      manifold,
    }:
    let
      imageSystems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forSystems = nixpkgs.lib.genAttrs imageSystems;

      # One image per system: nix2container's image.json.
      image =
        system: name: package:
        nix2container.packages.${system}.nix2container.buildImage {
          inherit name;
          config.Entrypoint = [ (nixpkgs.lib.getExe package) ];
          copyToRoot = [ nixpkgs.legacyPackages.${system}.cacert ];
          maxLayers = 20;
        };
      fdImages = forSystems (system: image system "fd" nixpkgs.legacyPackages.${system}.fd);
      rgImages = forSystems (system: image system "rg" nixpkgs.legacyPackages.${system}.ripgrep);

      # The wrappers run on the machine that publishes (x86_64 here); the
      # images of both systems are its inputs.
      manifest =
        pkgs: name: images:
        manifold.lib.mkManifest {
          inherit pkgs images;
          name = "${name}-manifest";
          github.enable = true;
          # One package per tool: ghcr.io/<owner>/<repo>/fd. `${NAME,,}`
          # is expanded (lower-cased) when the wrapper runs.
          registries."ghcr.io".repo = "\${GITHUB_REPOSITORY,,}/${name}";
          annotations.org.opencontainers.image.title = name;
        };
    in
    {
      packages = forSystems (system: {
        fd = fdImages.${system};
        rg = rgImages.${system};
      });

      apps.x86_64-linux =
        let
          pkgs = nixpkgs.legacyPackages.x86_64-linux;
          app = drv: {
            type = "app";
            program = nixpkgs.lib.getExe drv;
          };
        in
        {
          fdManifest = app (manifest pkgs "fd" fdImages);
          rgManifest = app (manifest pkgs "rg" rgImages);
        };

      # `nix run .#fdManifest` also finds packages.
      legacyPackages.x86_64-linux = {
        fdManifest = manifest nixpkgs.legacyPackages.x86_64-linux "fd" fdImages;
        rgManifest = manifest nixpkgs.legacyPackages.x86_64-linux "rg" rgImages;
      };
    };
}
