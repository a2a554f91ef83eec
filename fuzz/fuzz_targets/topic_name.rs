//! Fuzzes topic-name validation: an accepted name is a single, plain path
//! component (no separator, not `.` or `..`, ASCII from the allowed set), so
//! no accepted name can reach outside the data dir.
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use shardlog_engine::validate_topic_name;

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    if validate_topic_name(name).is_ok() {
        assert!((1..=249).contains(&name.len()));
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        );
        let components: Vec<Component> = Path::new(name).components().collect();
        assert_eq!(components.len(), 1, "{name:?} is one path component");
        assert!(
            matches!(components[0], Component::Normal(_)),
            "{name:?} is a plain name"
        );
        assert_eq!(
            Path::new("/data").join(name).parent(),
            Some(Path::new("/data"))
        );
    }
});
