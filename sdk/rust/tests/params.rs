//! testdata/params.json: a param value read as each Rust type through
//! `ParamValues::get`, the path a stage's `Params::decode` takes — the
//! accepted value, or a refusal of the reason class the Go SDK gives.

use std::collections::HashMap;

use pipehost::pb::value::Kind;
use pipehost::{pb, Error, ErrorKind, FromValue, ParamSpec, ParamValues};
use serde_json::{json, Value};

mod common;
use common::{reason_classes, vectors};

fn hex(v: &Value) -> u64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("not a uint64 string: {v}"));
    u64::from_str_radix(s.strip_prefix("0x").unwrap(), 16).unwrap()
}

fn wire_value(j: &Value) -> pb::Value {
    let kind = if let Some(b) = j.get("bool") {
        Some(Kind::BoolValue(b.as_bool().unwrap()))
    } else if let Some(i) = j.get("int") {
        Some(Kind::IntValue(i.as_str().unwrap().parse().unwrap()))
    } else if let Some(bits) = j.get("float_bits") {
        Some(Kind::FloatValue(f64::from_bits(hex(bits))))
    } else {
        j.get("string")
            .map(|s| Kind::StringValue(s.as_str().unwrap().to_string()))
    };
    pb::Value { kind }
}

/// The result in the vectors' encoding.
trait Encode {
    fn encode(&self) -> Value;
}
impl Encode for bool {
    fn encode(&self) -> Value {
        json!({ "bool": self })
    }
}
impl Encode for String {
    fn encode(&self) -> Value {
        json!({ "string": self })
    }
}
impl Encode for f32 {
    fn encode(&self) -> Value {
        json!({ "f32_bits": format!("{:#010x}", self.to_bits()) })
    }
}
impl Encode for f64 {
    fn encode(&self) -> Value {
        json!({ "f64_bits": format!("{:#018x}", self.to_bits()) })
    }
}
macro_rules! encode_int {
    ($($t:ty),*) => {$(
        impl Encode for $t {
            fn encode(&self) -> Value {
                json!({ "int": self.to_string() })
            }
        }
    )*};
}
encode_int!(i8, i16, i32, i64, u8, u16, u32, u64);

fn read<T: FromValue + Encode>(spec: ParamSpec, v: pb::Value) -> Result<Value, Error> {
    let values = HashMap::from([("v".to_string(), v)]);
    let specs = [spec];
    ParamValues::new(&values, &specs)
        .get::<T>("v")
        .map(|x| x.encode())
}

fn read_as(ty: &str, v: pb::Value) -> Result<Value, Error> {
    match ty {
        "bool" => read::<bool>(ParamSpec::bool("v"), v),
        "i8" => read::<i8>(ParamSpec::int("v"), v),
        "i16" => read::<i16>(ParamSpec::int("v"), v),
        "i32" => read::<i32>(ParamSpec::int("v"), v),
        "i64" => read::<i64>(ParamSpec::int("v"), v),
        "u8" => read::<u8>(ParamSpec::int("v"), v),
        "u16" => read::<u16>(ParamSpec::int("v"), v),
        "u32" => read::<u32>(ParamSpec::int("v"), v),
        "u64" => read::<u64>(ParamSpec::int("v"), v),
        "f32" => read::<f32>(ParamSpec::float("v"), v),
        "f64" => read::<f64>(ParamSpec::float("v"), v),
        "string" => read::<String>(ParamSpec::string("v"), v),
        t => panic!("unknown type {t}"),
    }
}

fn is_nan(r: &Value) -> bool {
    if let Some(b) = r.get("f32_bits") {
        let s = b.as_str().unwrap().strip_prefix("0x").unwrap();
        return f32::from_bits(u32::from_str_radix(s, 16).unwrap()).is_nan();
    }
    r.get("f64_bits")
        .is_some_and(|b| f64::from_bits(hex(b)).is_nan())
}

#[test]
fn shared_vectors() {
    let v = vectors("params.json", "pipehost.params/1");
    let phrases = HashMap::from([
        ("no_value", "has no value"),
        ("type", "expected "),
        ("range", "does not fit"),
    ]);
    reason_classes(&v, &phrases);
    let (mut accepted, mut rejected) = (0, 0);
    for c in v["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let got = read_as(c["type"].as_str().unwrap(), wire_value(&c["value"]));
        if c["accept"].as_bool().unwrap() {
            accepted += 1;
            let got = got.unwrap_or_else(|e| panic!("{name}: refused: {e}"));
            if is_nan(&c["result"]) {
                assert!(is_nan(&got), "{name}: got {got}");
            } else {
                assert_eq!(got, c["result"], "{name}");
            }
        } else {
            rejected += 1;
            let reason = c["reason"].as_str().unwrap();
            let e = got.expect_err(&format!("{name}: accepted, want a {reason} refusal"));
            assert_eq!(e.kind(), ErrorKind::InvalidParam, "{name}");
            assert!(
                e.message().starts_with("param \"v\": ") && e.message().contains(phrases[reason]),
                "{name}: want a {reason} refusal, got: {}",
                e.message()
            );
        }
    }
    assert!(
        accepted > 100 && rejected > 100,
        "{accepted} accepted, {rejected} rejected"
    );
}
