//! Arbitrary bytes as a nix2container `image.json`: `parse_image_json` must
//! return a value or an error, never panic. What parses is carried on the way
//! publishing carries it: into `config_json`, and each rewrite and perm regex
//! through the Go-RE2 translation, matched against its store path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use manifold::input::nix2container::go_regex::GoRegex;
use manifold::input::nix2container::{config_json, parse_image_json};

fuzz_target!(|data: &[u8]| {
    let Ok(image) = parse_image_json("fuzz", data) else {
        return;
    };
    let diff_ids: Vec<_> = image.layers.iter().map(|l| l.diff_id.clone()).collect();
    for created in [None, Some("2024-01-01T00:00:00Z")] {
        let config = config_json(&image, &diff_ids, created);
        // One history entry and one diff_id per layer, whatever the input.
        let listed = config["rootfs"]["diff_ids"].as_array().map_or(0, Vec::len);
        assert_eq!(listed, image.layers.len());
        let history = config["history"].as_array().map_or(0, Vec::len);
        assert_eq!(history, image.layers.len());
        // The config is uploaded as JSON: it must serialise.
        serde_json::to_vec(&config).expect("a Value serialises");
    }
    for layer in &image.layers {
        for path in &layer.paths {
            let Some(options) = &path.options else {
                continue;
            };
            let subject = path.path.as_os_str().as_encoded_bytes();
            if !options.rewrite.regex.is_empty() {
                if let Ok(re) = GoRegex::new(&options.rewrite.regex) {
                    let _ = re.replace_all(subject, &options.rewrite.repl);
                }
            }
            for perm in &options.perms {
                if let Ok(re) = GoRegex::new(&perm.regex) {
                    let _ = re.is_match(subject);
                }
            }
        }
    }
});
