//! The `commit_record` target: the bytes of `log/{partition}/{seq}.json`.
//!
//! Records come from the bucket, which other gateways (or anyone with write
//! access) fill. A record that parses is used as readers use it (its next
//! offset, its receive-time span, its segment's key) and must survive
//! serialising and parsing again unchanged. Key names are parsed too.

use object_store::path::Path;
use sluice::log::record::{seq_of, CommitRecord, StreamPath};

pub fn commit_record(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = seq_of(&Path::from(text));
    }
    let Ok(record) = CommitRecord::parse(data) else {
        return;
    };
    let next = record.next_offset();
    assert!(next >= record.first_offset);
    assert_eq!(record.contains(record.first_offset), record.count > 0);
    let _ = sluice::log::window::span(&record, || "key".to_string());
    let stream = StreamPath::new(&Path::from("root"), "tenant", "stream");
    let key = stream.segment(&record.segment);
    let inside =
        key.as_ref() == "root/tenant/stream" || key.as_ref().starts_with("root/tenant/stream/");
    assert!(inside, "segment key escapes the stream: {key}");
    let again = serde_json::to_vec(&record).expect("a record serialises");
    let back = CommitRecord::parse(&again).expect("a serialised record parses");
    assert_eq!(back, record);
}
