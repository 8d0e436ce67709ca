# mkManifest's options -> `manifold publish` arguments.
#
# A pure function using builtins only (no nixpkgs), so CI can test it offline
# with `nix-instantiate --eval --strict --json` (tests/nix/args-test.nix).
# nix/manifest.nix turns its result into the wrapper script; manifold itself
# decides tags, annotations and credentials at run time.
#
# The option names are flocken's `mkDockerManifest` ones, so a flocken user
# can swap the function and keep the attribute set. Nothing here reads the
# environment: a string may name variables (`$NAME`, `${NAME}`, `${NAME,,}`
# lower-cased, `${NAME:-default}`), which the wrapper expands when it runs.
# Passwords must be such a name, so no secret reaches the Nix store.
options:
let
  inherit (builtins)
    attrNames
    concatLists
    concatMap
    filter
    isAttrs
    isList
    isString
    length
    map
    match
    toJSON
    ;

  fail = msg: throw "mkManifest: ${msg}";

  known = [
    "imageFiles"
    "imageStreams"
    "images"
    "registries"
    "version"
    "branch"
    "defaultBranch"
    "tags"
    "autoTags"
    "annotations"
    "github"
    "format"
    "manifestName"
    "extraArgs"
    "name"
    "package"
  ];
  unknown = filter (n: !(builtins.elem n known)) (attrNames options);

  opt = name: default: options.${name} or default;

  # A value given as null or "" counts as unset, as in flocken.
  isSet = v: v != null && v != "";
  str = v: if isString v then v else toString v;

  # ---- inputs: one image per platform, in the order given ----
  # A list leaves the platform to the image config; an attribute set maps a
  # Nix system (or `os/arch[/variant]`) to its image, like `packages`.
  inputsOf =
    option: kind:
    let
      v = opt option [ ];
      path = image: kind + str image;
    in
    if isList v then
      map path (filter (i: i != null) v)
    else if isAttrs v && !(v ? outPath) then
      map (system: "${system}=${path v.${system}}") (attrNames v)
    else
      fail "`${option}` must be a list of images or an attribute set from Nix systems to images";

  inputs =
    inputsOf "imageFiles" "archive:" ++ inputsOf "imageStreams" "stream:"
    # flocken's `images` was an alias of `imageFiles`; here it also takes
    # nix2container images, so the kind is left to manifold's content sniffing.
    ++ inputsOf "images" "";

  # ---- registries ----
  github = opt "github" { };
  githubOn = github.enable or false;
  githubRegistry = github.registry or "ghcr.io";
  githubDefaults = {
    ${githubRegistry} = {
      enable = github.enableRegistry or true;
      # Lower-cased when the wrapper runs: OCI repository names are lower-case
      # and GitHub's are not (flocken pushed `Owner/Repo` and failed).
      repo = github.repo or "\${GITHUB_REPOSITORY,,}";
      username = github.actor or "\${GITHUB_ACTOR:-github-actions}";
      password = github.token or "$GITHUB_TOKEN";
    };
  };
  userRegistries = opt "registries" { };
  allRegistries =
    if githubOn then
      # The user's own settings for the GitHub registry win, key by key.
      githubDefaults
      // userRegistries
      // (
        if userRegistries ? ${githubRegistry} then
          { ${githubRegistry} = githubDefaults.${githubRegistry} // userRegistries.${githubRegistry}; }
        else
          { }
      )
    else
      userRegistries;

  # A password is the name of a variable, never the secret itself.
  passwordVar =
    host: p:
    let
      bare = if isString p then match "\\$([A-Za-z_][A-Za-z0-9_]*)" p else null;
      braced = if isString p then match "\\$\\{([A-Za-z_][A-Za-z0-9_]*)}" p else null;
    in
    if bare != null then
      builtins.head bare
    else if braced != null then
      builtins.head braced
    else
      fail "registry `${host}`: `password` must name an environment variable, like \"$TOKEN\", not hold the secret (it would be written to the world-readable Nix store)";

  registryList = map (
    key:
    let
      r = allRegistries.${key};
      host = r.name or key;
      hasUser = isSet (r.username or null);
      hasPass = isSet (r.password or null);
    in
    if !(r ? repo) || !isSet r.repo then
      fail "registry `${key}` has no `repo`"
    else if hasUser != hasPass then
      fail "registry `${key}`: give both `username` and `password`, or neither (manifold then finds credentials itself)"
    else
      {
        inherit host;
        enable = r.enable or true;
        repo = "${host}/${r.repo}";
        credentials =
          if hasUser then
            {
              username = r.username;
              passwordVar = passwordVar key r.password;
            }
          else
            null;
      }
  ) (attrNames allRegistries);

  enabled = filter (r: r.enable) registryList;

  credentials = map (r: {
    registry = r.host;
    inherit (r.credentials) username passwordVar;
  }) (filter (r: r.credentials != null) enabled);

  # ---- tags ----
  tags = filter isSet (opt "tags" [ ]);

  # flocken's autoTags switches, all on by default. `branch` also covers
  # manifold's `pr` kind (flocken's branch tag on a pull request was `84/merge`).
  auto = {
    branch = true;
    latest = true;
    version = true;
    majorMinor = true;
    major = true;
    sha = false;
  } // opt "autoTags" { };
  autoKinds = concatLists [
    (if auto.branch then [ "branch" "pr" ] else [ ])
    (if auto.latest then [ "latest" ] else [ ])
    (if auto.version then [ "version" ] else [ ])
    (if auto.majorMinor then [ "minor" ] else [ ])
    (if auto.major then [ "major" ] else [ ])
    (if auto.sha then [ "sha" ] else [ ])
  ];
  defaultKinds = [ "branch" "pr" "latest" "version" "minor" "major" ];
  autoTagOptions =
    if autoKinds == defaultKinds then
      [ ]
    else if autoKinds == [ ] then
      [ [ "--no-auto-tags" ] ]
    else
      [ [ "--auto-tags" (builtins.concatStringsSep "," autoKinds) ] ];

  # ---- annotations: nested attribute sets flatten to dotted keys ----
  leaves =
    prefix: v:
    if isAttrs v && !(v ? outPath) then
      concatMap (k: leaves (if prefix == "" then k else "${prefix}.${k}") v.${k}) (attrNames v)
    else if v == null then
      [ ]
    else
      [ "${prefix}=${str v}" ];
  annotations = leaves "" (opt "annotations" { });

  format = opt "format" "oci";

  value = flag: v: if isSet v then [ [ flag (str v) ] ] else [ ];

  # Each option is [flag] or [flag value]; the wrapper drops a [flag value]
  # whose value expands to nothing, so an unset `$VERSION` is no `--version ""`.
  publishOptions = concatLists [
    (map (r: [ "--repo" r.repo ]) enabled)
    (map (t: [ "--tag" (str t) ]) tags)
    (value "--version" (opt "version" null))
    (value "--branch" (opt "branch" (github.branch or null)))
    (value "--default-branch" (opt "defaultBranch" (github.defaultBranch or null)))
    autoTagOptions
    (map (a: [ "--annotation" a ]) annotations)
    # manifold has no `--format` yet: passing it makes the run fail loudly
    # rather than publish OCI when Docker v2s2 was asked for.
    (
      if format == "oci" then
        [ ]
      else if format == "v2s2" || format == "docker" then
        [ [ "--format" "docker" ] ]
      else
        fail "`format` must be \"oci\" or \"v2s2\", not `${str format}`"
    )
    (map (a: [ a ]) (opt "extraArgs" [ ]))
  ];

  notes = concatLists [
    (if format != "oci" then [ "`format = \"${format}\"` is passed as `--format docker`, which this manifold does not have yet: the run will stop with a usage error" ] else [ ])
    (if options ? manifestName then [ "`manifestName` is ignored: manifold builds no local manifest list" ] else [ ])
    (if github ? apiEndpoint then [ "`github.apiEndpoint` is ignored: annotations come from the event payload at run time" ] else [ ])
    (if enabled == [ ] then [ "no registry: manifold publishes to `ghcr.io/<owner>/<repo>` in GitHub Actions and stops elsewhere" ] else [ ])
  ];

  # Single credential for the only destination: `--username` + stdin. Several:
  # a temporary containers auth file (one `--password-stdin` serves one login).
  credentialMode =
    if credentials == [ ] then
      "none"
    else if length credentials == 1 && length enabled == 1 then
      "stdin"
    else
      "authfile";

  # Variables the run cannot do without (credentials are checked apart).
  required =
    if githubOn && (githubDefaults.${githubRegistry}.enable) && !(github ? repo) && !((userRegistries.${githubRegistry} or { }) ? repo) then
      [
        {
          var = "GITHUB_REPOSITORY";
          what = "the `owner/repo` that `github.enable` publishes to (set it, or `github.repo`)";
        }
      ]
    else
      [ ];

  argv = [ "publish" ] ++ concatLists publishOptions ++ [ "--" ] ++ inputs;
in
if unknown != [ ] then
  fail "unknown option(s) ${toJSON unknown}; see docs/migrating.md for flocken's names"
else if inputs == [ ] then
  fail "give at least one image: `imageFiles`, `imageStreams` or `images`"
else
  {
    inherit
      argv
      inputs
      credentials
      credentialMode
      notes
      required
      ;
    options = publishOptions;
  }
