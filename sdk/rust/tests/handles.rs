//! Handle validation (docs/protocol.md, "Validation"): the shared vectors of
//! testdata/handles.json (the Go host's decisions), each rule, overflow
//! checks, and density.

use pipehost::handle::{grid_handle, is_dense, validate, Reason};
use pipehost::{pb, DType};
use serde_json::Value;

mod common;
use common::vectors;

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
    let v = vectors("handles.json", "pipehost.handles/1");
    let classes = v["reasons"].as_object().unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() >= 50, "only {} cases", cases.len());
    let (mut accepted, mut rejected) = (0, 0);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let j = &c["handle"];
        let digest = j["digest"].as_str().unwrap();
        let h = pb::Handle {
            segment_id: hex(&j["segment_id"]),
            segment_size: hex(&j["segment_size"]),
            offset: hex(&j["offset"]),
            nbytes: hex(&j["nbytes"]),
            dtype: j["dtype"].as_i64().unwrap() as i32,
            shape: hexes(&j["shape"]),
            strides: hexes(&j["strides"]),
            kind: j["kind"].as_i64().unwrap() as i32,
            level: j["level"].as_u64().unwrap() as u32,
            format: j["format"].as_i64().unwrap() as i32,
            digest: vec![0; digest.len() / 2],
        };
        let got = validate(Some(&h), hex(&c["real_size"]));
        if c["accept"].as_bool().unwrap() {
            accepted += 1;
            assert!(got.is_ok(), "{name}: rejected: {}", got.unwrap_err());
            assert_eq!(
                is_dense(&h),
                c["dense"].as_bool().unwrap(),
                "{name}: density"
            );
        } else {
            rejected += 1;
            let want = c["reason"].as_str().unwrap();
            assert!(classes.contains_key(want), "{name}: unknown class {want}");
            let e = got
                .err()
                .unwrap_or_else(|| panic!("{name}: accepted, want {want}"));
            assert_eq!(e.reason.as_str(), want, "{name}: {}", e.message);
            assert!(
                e.message.contains(&format!("segment {}", h.segment_id)),
                "{name}: {}",
                e.message
            );
        }
    }
    assert!(accepted > 0 && rejected > 0);
    // Every class of the file is exercised, and this SDK knows every one.
    for class in classes.keys() {
        assert!(
            cases.iter().any(|c| c["reason"] == class.as_str()),
            "no case for {class}"
        );
    }
}

fn grid(h: u64, w: u64) -> pb::Handle {
    grid_handle(7, 4096, 0, DType::F32, h, w, 0)
}

fn reason(h: &pb::Handle, size: u64) -> Option<Reason> {
    validate(Some(h), size).err().map(|e| {
        assert!(
            e.message.contains("segment 7") || e.reason == Reason::Missing,
            "{}",
            e.message
        );
        e.reason
    })
}

#[test]
fn each_rule_has_its_reason() {
    let ok = grid(16, 16); // 1024 bytes in a 4096-byte segment
    assert_eq!(reason(&ok, 4096), None);
    assert!(is_dense(&ok));
    assert_eq!(validate(None, 0).unwrap_err().reason, Reason::Missing);

    assert_eq!(reason(&ok, 8192), Some(Reason::SegmentSize));
    assert_eq!(
        reason(
            &pb::Handle {
                offset: 32,
                ..ok.clone()
            },
            4096
        ),
        Some(Reason::UnalignedOffset)
    );
    assert_eq!(
        reason(
            &pb::Handle {
                offset: 3072,
                ..ok.clone()
            },
            4096
        ),
        None
    );
    assert_eq!(
        reason(
            &pb::Handle {
                offset: 3136,
                ..ok.clone()
            },
            4096
        ),
        Some(Reason::OutOfBounds)
    );
    assert_eq!(
        reason(
            &pb::Handle {
                offset: u64::MAX - 63,
                ..ok.clone()
            },
            4096
        ),
        Some(Reason::OutOfBounds)
    );
    assert_eq!(
        reason(
            &pb::Handle {
                digest: vec![0; 31],
                ..ok.clone()
            },
            4096
        ),
        Some(Reason::DigestLength)
    );
    assert_eq!(
        reason(
            &pb::Handle {
                digest: vec![0; 32],
                ..ok.clone()
            },
            4096
        ),
        None
    );
    assert_eq!(
        reason(
            &pb::Handle {
                format: 0,
                ..ok.clone()
            },
            4096
        ),
        Some(Reason::UnknownFormat)
    );
    assert_eq!(
        reason(
            &pb::Handle {
                format: 3,
                ..ok.clone()
            },
            4096
        ),
        Some(Reason::UnknownFormat)
    );
    assert_eq!(
        reason(
            &pb::Handle {
                dtype: 0,
                ..ok.clone()
            },
            4096
        ),
        Some(Reason::UnknownDType)
    );
    assert_eq!(
        reason(
            &pb::Handle {
                dtype: 11,
                ..ok.clone()
            },
            4096
        ),
        Some(Reason::UnknownDType)
    );
    assert_eq!(
        reason(
            &pb::Handle {
                strides: vec![64],
                ..ok.clone()
            },
            4096
        ),
        Some(Reason::RankMismatch)
    );
    assert_eq!(
        reason(
            &pb::Handle {
                strides: vec![64, 0],
                ..ok.clone()
            },
            4096
        ),
        Some(Reason::ZeroStride)
    );
    assert_eq!(
        reason(
            &pb::Handle {
                strides: vec![64, 2],
                ..ok.clone()
            },
            4096
        ),
        Some(Reason::StrideNotMultiple)
    );
    assert_eq!(
        reason(
            &pb::Handle {
                nbytes: 1020,
                ..ok.clone()
            },
            4096
        ),
        Some(Reason::ExtentExceedsNbytes)
    );
}

#[test]
fn extents_and_overflow() {
    let base = grid(16, 16);
    // Strided views are valid as long as they stay inside nbytes.
    let strided = pb::Handle {
        shape: vec![8, 16],
        strides: vec![128, 4],
        ..base.clone()
    };
    assert_eq!(reason(&strided, 4096), None);
    assert!(!is_dense(&strided));
    // Extent e + Σ(shape-1)·stride exactly nbytes is fine; one more element is not.
    let tight = pb::Handle {
        nbytes: 4 + 15 * 64 + 15 * 4,
        ..base.clone()
    };
    assert_eq!(reason(&tight, 4096), None);
    let over = pb::Handle {
        nbytes: 4 + 15 * 64 + 15 * 4 - 1,
        ..base.clone()
    };
    assert_eq!(reason(&over, 4096), Some(Reason::ExtentExceedsNbytes));
    // An empty dimension reaches nothing.
    let empty = pb::Handle {
        shape: vec![0, u64::MAX],
        strides: vec![4, 4],
        nbytes: 0,
        ..base.clone()
    };
    assert_eq!(reason(&empty, 4096), None);
    // A scalar is one element.
    let scalar = pb::Handle {
        shape: vec![],
        strides: vec![],
        nbytes: 4,
        ..base.clone()
    };
    assert_eq!(reason(&scalar, 4096), None);
    assert_eq!(
        reason(
            &pb::Handle {
                nbytes: 3,
                ..scalar
            },
            4096
        ),
        Some(Reason::ExtentExceedsNbytes)
    );
    // Products and sums that wrap around u64 are errors, never small numbers.
    let mul = pb::Handle {
        shape: vec![1 << 62, 1],
        strides: vec![8, 4],
        ..base.clone()
    };
    assert_eq!(reason(&mul, 4096), Some(Reason::Overflow));
    let add = pb::Handle {
        shape: vec![1 << 62, 1 << 62],
        strides: vec![4, 4],
        ..base.clone()
    };
    assert_eq!(reason(&add, 4096), Some(Reason::Overflow));
    let huge = pb::Handle {
        shape: vec![u64::MAX, 2],
        strides: vec![4, u64::MAX - 3],
        ..base
    };
    assert_eq!(reason(&huge, 4096), Some(Reason::Overflow));
}

#[test]
fn arrow_buffers_have_no_shape() {
    let t = pb::Handle {
        segment_id: 7,
        segment_size: 4096,
        nbytes: 1000,
        kind: pb::PortKind::Table as i32,
        format: pb::Format::ArrowIpc as i32,
        ..Default::default()
    };
    assert_eq!(reason(&t, 4096), None);
    assert!(!is_dense(&t));
    assert_eq!(
        reason(
            &pb::Handle {
                shape: vec![10],
                ..t.clone()
            },
            4096
        ),
        Some(Reason::ArrowShape)
    );
    assert_eq!(
        reason(
            &pb::Handle {
                strides: vec![1],
                ..t
            },
            4096
        ),
        Some(Reason::ArrowShape)
    );
}

#[test]
fn density() {
    let g = grid(4, 8);
    assert!(is_dense(&g));
    assert!(!is_dense(&pb::Handle {
        nbytes: g.nbytes + 4,
        ..g.clone()
    }));
    assert!(!is_dense(&pb::Handle {
        strides: vec![64, 4],
        ..g.clone()
    }));
    assert!(!is_dense(&pb::Handle {
        dtype: 0,
        ..g.clone()
    }));
    let d = grid_handle(1, 1 << 20, 64, DType::F64, 3, 5, 2);
    assert_eq!(
        (d.nbytes, d.strides.clone(), d.level),
        (120, vec![40, 8], 2)
    );
    assert!(is_dense(&d));
}
