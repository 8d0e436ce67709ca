# nix/args.nix against flocken-style examples: each case gives options and
# the exact `manifold publish` argv (and credentials) expected. Evaluating
# this file throws, naming the case and both values, on the first mismatch;
# it evaluates to the list of case names when all pass.
#   nix-instantiate --store dummy:// --eval --strict --json tests/nix/args-test.nix
let
  args = import ../../nix/args.nix;
  fd = "/nix/store/0000000000000000000000000000000a-fd-stream";
  fdArm = "/nix/store/0000000000000000000000000000000b-fd-stream";
  tar = "/nix/store/0000000000000000000000000000000c-fd.tar.gz";

  # { name; options; argv; credentials ? [ ]; credentialMode ? "none"; notes ? null; }
  cases = [
    {
      name = "flocken README: github.enable with two streams";
      options = {
        github = {
          enable = true;
          token = "$GITHUB_TOKEN";
        };
        version = "$VERSION";
        imageStreams = [ fd fdArm ];
      };
      argv = [
        "publish"
        "--repo"
        "ghcr.io/\${GITHUB_REPOSITORY,,}"
        "--version"
        "$VERSION"
        "--"
        "stream:${fd}"
        "stream:${fdArm}"
      ];
      credentialMode = "stdin";
      credentials = [
        {
          registry = "ghcr.io";
          username = "\${GITHUB_ACTOR:-github-actions}";
          passwordVar = "GITHUB_TOKEN";
        }
      ];
    }
    {
      name = "systems map to platforms; majorMinor off drops minor";
      options = {
        images = {
          x86_64-linux = fd;
          aarch64-linux = fdArm;
        };
        registries."ghcr.io".repo = "acme/fd";
        autoTags.majorMinor = false;
      };
      argv = [
        "publish"
        "--repo"
        "ghcr.io/acme/fd"
        "--auto-tags"
        "branch,pr,latest,version,major"
        "--"
        "aarch64-linux=${fdArm}"
        "x86_64-linux=${fd}"
      ];
    }
    {
      name = "every autoTag off: no automatic tags, user tags kept in order without nulls";
      options = {
        imageFiles = [ tar ];
        registries."registry.example.com".repo = "team/fd";
        tags = [
          "nightly"
          null
          ""
          "edge"
        ];
        autoTags = {
          branch = false;
          latest = false;
          version = false;
          majorMinor = false;
          major = false;
        };
      };
      argv = [
        "publish"
        "--repo"
        "registry.example.com/team/fd"
        "--tag"
        "nightly"
        "--tag"
        "edge"
        "--no-auto-tags"
        "--"
        "archive:${tar}"
      ];
    }
    {
      name = "two registries with different credentials: auth file; a disabled one is left out";
      options = {
        imageStreams = {
          x86_64-linux = fd;
        };
        registries = {
          "docker.io" = {
            repo = "acme/fd";
            username = "acme";
            password = "\${DOCKERHUB_TOKEN}";
          };
          "quay.io" = {
            repo = "acme/fd";
            username = "acme+bot";
            password = "$QUAY_TOKEN";
          };
          "old.example.com" = {
            repo = "fd";
            enable = false;
          };
        };
        branch = "main";
        defaultBranch = "trunk";
      };
      argv = [
        "publish"
        "--repo"
        "docker.io/acme/fd"
        "--repo"
        "quay.io/acme/fd"
        "--branch"
        "main"
        "--default-branch"
        "trunk"
        "--"
        "x86_64-linux=stream:${fd}"
      ];
      credentialMode = "authfile";
      credentials = [
        {
          registry = "docker.io";
          username = "acme";
          passwordVar = "DOCKERHUB_TOKEN";
        }
        {
          registry = "quay.io";
          username = "acme+bot";
          passwordVar = "QUAY_TOKEN";
        }
      ];
    }
    {
      name = "github.enable plus another registry: the GitHub registry's own settings merge";
      options = {
        imageStreams = [ fd ];
        github.enable = true;
        registries."ghcr.io".repo = "acme/fd";
        registries."docker.io" = {
          repo = "acme/fd";
          username = "$DOCKERHUB_USER";
          password = "$DOCKERHUB_TOKEN";
        };
      };
      argv = [
        "publish"
        "--repo"
        "docker.io/acme/fd"
        "--repo"
        "ghcr.io/acme/fd"
        "--"
        "stream:${fd}"
      ];
      credentialMode = "authfile";
      credentials = [
        {
          registry = "docker.io";
          username = "$DOCKERHUB_USER";
          passwordVar = "DOCKERHUB_TOKEN";
        }
        {
          registry = "ghcr.io";
          username = "\${GITHUB_ACTOR:-github-actions}";
          passwordVar = "GITHUB_TOKEN";
        }
      ];
    }
    {
      name = "nested annotations flatten; format v2s2 is passed on with a note";
      options = {
        imageFiles = [ tar ];
        registries."ghcr.io".repo = "acme/fd";
        annotations = {
          org.opencontainers.image = {
            title = "fd";
            licenses = "MIT";
            url = null;
          };
          "com.example.build" = 42;
        };
        format = "v2s2";
        manifestName = "fd";
      };
      argv = [
        "publish"
        "--repo"
        "ghcr.io/acme/fd"
        "--annotation"
        "com.example.build=42"
        "--annotation"
        "org.opencontainers.image.licenses=MIT"
        "--annotation"
        "org.opencontainers.image.title=fd"
        "--format"
        "docker"
        "--"
        "archive:${tar}"
      ];
      notes = [
        "`format = \"v2s2\"` is passed as `--format docker`, which this manifold does not have yet: the run will stop with a usage error"
        "`manifestName` is ignored: manifold builds no local manifest list"
      ];
    }
    {
      name = "sha on, extra arguments last before the inputs";
      options = {
        imageStreams = [ fd ];
        registries."localhost:5000".repo = "fd";
        autoTags.sha = true;
        extraArgs = [
          "--compression"
          "zstd"
        ];
      };
      argv = [
        "publish"
        "--repo"
        "localhost:5000/fd"
        "--auto-tags"
        "branch,pr,latest,version,minor,major,sha"
        "--compression"
        "zstd"
        "--"
        "stream:${fd}"
      ];
    }
  ];

  # Options that must be refused at evaluation.
  refused = [
    {
      name = "a literal password would land in the Nix store";
      options = {
        imageStreams = [ fd ];
        registries."ghcr.io" = {
          repo = "acme/fd";
          username = "acme";
          password = "hunter2";
        };
      };
    }
    {
      name = "no image";
      options.registries."ghcr.io".repo = "acme/fd";
    }
    {
      name = "a misspelt option";
      options = {
        imageStreams = [ fd ];
        autotags.major = false;
      };
    }
    {
      name = "a username without a password";
      options = {
        imageStreams = [ fd ];
        registries."ghcr.io" = {
          repo = "acme/fd";
          username = "acme";
        };
      };
    }
    {
      name = "an unknown format";
      options = {
        imageStreams = [ fd ];
        format = "v1";
      };
    }
  ];

  check =
    c:
    let
      got = args c.options;
      want = {
        inherit (c) argv;
        credentials = c.credentials or [ ];
        credentialMode = c.credentialMode or "none";
      };
      have = {
        inherit (got) argv credentials credentialMode;
      };
      notesOk = !(c ? notes) || got.notes == c.notes;
    in
    if have == want && notesOk then
      c.name
    else
      throw ''
        args-test: case "${c.name}" failed
          expected: ${builtins.toJSON (want // { notes = c.notes or "(any)"; })}
          got:      ${builtins.toJSON (have // { inherit (got) notes; })}'';

  checkRefused =
    c:
    let
      r = builtins.tryEval (builtins.deepSeq (args c.options) true);
    in
    if r.success then
      throw "args-test: case \"${c.name}\" was accepted, it must be refused"
    else
      "refused: ${c.name}";
in
map check cases ++ map checkRefused refused
