//! Arbitrary text through every parser of names the user types: image
//! references, repositories, inputs, platforms, tags and `--cache-from`. None may panic, and
//! where a value prints back as text, that text must parse to the same value.
#![no_main]

use std::str::FromStr;

use libfuzzer_sys::fuzz_target;
use manifold::input::{InputKind, InputSpec};
use manifold::oci::Platform;
use manifold::publish::known::CacheFrom;
use manifold::reference::{is_valid_tag, Reference, Registry, Repository};
use manifold::tags::{sanitize, validate_tag};

/// Everything a registry offers to its callers: none may panic.
fn exercise_registry(registry: &Registry) {
    let _ = registry.api_base();
    let _ = registry.api_base_with(true);
    let _ = registry.hostname();
    let _ = registry.is_loopback();
    let again = Registry::parse(registry.host()).expect("a registry's host parses");
    assert_eq!(&again, registry);
}

fn check_reference(text: &str) {
    let Ok(reference) = Reference::parse(text) else {
        return;
    };
    exercise_registry(&reference.repository.registry);
    let _ = reference.manifest_reference();
    let shown = reference.to_string();
    let again = Reference::parse(&shown)
        .unwrap_or_else(|e| panic!("`{text}` parsed, shown as `{shown}` it does not: {e}"));
    assert_eq!(again, reference, "`{text}` → `{shown}`");
    if let Some(tag) = &reference.tag {
        assert!(validate_tag(tag).is_ok(), "tag `{tag}` of `{text}`");
    }
    // The same repository with its tag or digest rebuilt.
    let repository = &reference.repository;
    if let Some(tag) = &reference.tag {
        assert_eq!(
            Reference::parse(&repository.tag(tag).to_string()).ok(),
            Some(repository.tag(tag))
        );
    }
    if let Some(digest) = &reference.digest {
        assert_eq!(
            Reference::parse(&repository.digest(digest).to_string()).ok(),
            Some(repository.digest(digest))
        );
    }
}

fn check_repository(text: &str) {
    if let Ok(repository) = Repository::parse(text) {
        exercise_registry(&repository.registry);
        let shown = repository.to_string();
        assert_eq!(Repository::parse(&shown).ok(), Some(repository.clone()));
        // Strict success implies lenient success, with nothing lowered.
        assert_eq!(
            Repository::parse_lenient(text).ok(),
            Some((repository, false)),
            "`{text}`"
        );
    }
    if let Ok((repository, _lowered)) = Repository::parse_lenient(text) {
        exercise_registry(&repository.registry);
        let shown = repository.to_string();
        // A lenient parse yields a name the strict parser takes as is.
        assert_eq!(
            Repository::parse(&shown).ok(),
            Some(repository.clone()),
            "`{text}` → `{shown}`"
        );
    }
}

fn check_input_spec(text: &str) {
    let Ok(spec) = InputSpec::from_str(text) else {
        return;
    };
    assert_eq!(spec.text, text);
    assert!(
        !spec.path.as_os_str().is_empty(),
        "`{text}` has an empty path"
    );
    if spec.kind == Some(InputKind::Remote) {
        check_reference(&spec.path.to_string_lossy());
    }
    if let Some(platform) = &spec.platform {
        check_platform_value(platform);
    }
}

fn check_platform_value(platform: &Platform) {
    let shown = platform.to_string();
    let again = Platform::from_str(&shown)
        .unwrap_or_else(|e| panic!("platform shown as `{shown}` does not parse: {e}"));
    assert_eq!(&again, platform);
}

/// A `--cache-from` value is a tag or digest of the destinations exactly
/// when it is not taken as an image, and an image is a reference that parses.
fn check_cache_from(text: &str) {
    match CacheFrom::from_str(text) {
        Ok(CacheFrom::InDestinations(reference)) => {
            assert!(
                is_valid_tag(&reference) || reference.parse::<manifold::digest::Digest>().is_ok(),
                "`{text}` → `{reference}`"
            );
        }
        Ok(CacheFrom::Image(reference)) => {
            assert_eq!(Reference::parse(text).ok(), Some(reference));
            check_reference(text);
        }
        Err(message) => assert!(message.contains("--cache-from"), "{message}"),
    }
}

fn check_tags(text: &str) {
    assert_eq!(
        validate_tag(text).is_ok(),
        is_valid_tag(text),
        "tags and reference disagree on `{text}`"
    );
    let clean = sanitize(text);
    if !clean.is_empty() {
        assert!(
            validate_tag(&clean).is_ok(),
            "sanitize(`{text}`) = `{clean}`"
        );
    }
    assert_eq!(
        sanitize(&clean),
        clean,
        "sanitize is not idempotent on `{text}`"
    );
    if validate_tag(text).is_ok() {
        assert_eq!(clean, text, "sanitize changed the valid tag `{text}`");
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();
    check_reference(text);
    check_repository(text);
    check_input_spec(text);
    if let Ok(platform) = Platform::from_str(text) {
        check_platform_value(&platform);
    }
    check_tags(text);
    check_cache_from(text);
});
