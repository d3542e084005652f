//! testdata/adopted.json: the handle the SDK returns for a dynamic output it
//! sent by ADOPT, field by field and as protobuf bytes.

use pipehost::handle::{adopted_handle, validate};
use pipehost::pb;
use prost::Message;
use serde_json::Value;

mod common;
use common::{unhex, vectors};

fn hex(v: &Value) -> u64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("not a uint64 string: {v}"));
    u64::from_str_radix(s.strip_prefix("0x").unwrap(), 16).unwrap()
}

fn hexes(v: &Value) -> Vec<u64> {
    v.as_array().unwrap().iter().map(hex).collect()
}

#[test]
fn shared_vectors() {
    let v = vectors("adopted.json", "pipehost.adopted/1");
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() >= 5);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let kind = match c["kind"].as_str().unwrap() {
            "table" => pb::PortKind::Table,
            _ => pb::PortKind::Blob,
        };
        let size = hex(&c["size"]);
        let h = adopted_handle(kind, size);
        let w = &c["handle"];
        let want = pb::Handle {
            segment_id: hex(&w["segment_id"]),
            segment_size: hex(&w["segment_size"]),
            offset: hex(&w["offset"]),
            nbytes: hex(&w["nbytes"]),
            dtype: w["dtype"].as_i64().unwrap() as i32,
            shape: hexes(&w["shape"]),
            strides: hexes(&w["strides"]),
            kind: w["kind"].as_i64().unwrap() as i32,
            level: w["level"].as_u64().unwrap() as u32,
            format: w["format"].as_i64().unwrap() as i32,
            digest: unhex(w["digest"].as_str().unwrap()),
        };
        assert_eq!(h, want, "{name}");
        assert_eq!(
            h.encode_to_vec(),
            unhex(c["wire"].as_str().unwrap()),
            "{name}: protobuf bytes"
        );
        // What the host does with it next: validate against the segment's size.
        validate(Some(&h), size).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
