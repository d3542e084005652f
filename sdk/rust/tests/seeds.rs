//! testdata/seeds.json: every seed operation, bit for bit (docs/seeds.md).

use pipehost::seed::{derive, fnv1a64, mix64, stage_seed, SplitMix64, Stream};
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/seeds.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).expect("seeds.json parses")
}

fn u(v: &Value) -> u64 {
    let s = v.as_str().expect("uint64s are strings");
    u64::from_str_radix(s.strip_prefix("0x").expect("0x prefix"), 16).expect("hex")
}

fn us(v: &Value) -> Vec<u64> {
    v.as_array().unwrap().iter().map(u).collect()
}

/// The hashed bytes of a name, from its *_hex field.
fn name_bytes(v: &Value) -> Vec<u8> {
    let h = v.as_str().unwrap();
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
        .collect()
}

fn list<'a>(v: &'a Value, key: &str) -> &'a Vec<Value> {
    let l = v[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} is missing"));
    assert!(!l.is_empty(), "{key} is empty");
    l
}

#[test]
fn splitmix64_outputs() {
    let v = vectors();
    for c in list(&v, "splitmix64") {
        let mut g = SplitMix64(u(&c["seed"]));
        let got: Vec<u64> = (0..8).map(|_| g.next_u64()).collect();
        assert_eq!(got, us(&c["outputs"]), "seed {}", c["seed"]);
    }
    // docs/seeds.md quotes these.
    let mut g = SplitMix64(0);
    assert_eq!(g.next_u64(), 0xe220a8397b1dcdaf);
    let mut g = SplitMix64(1234567);
    assert_eq!(g.next_u64(), 6457827717110365317);
}

#[test]
fn fnv1a64_hashes_bytes_as_given() {
    let v = vectors();
    for c in list(&v, "fnv1a64") {
        let bytes = name_bytes(&c["name_hex"]);
        assert_eq!(c["name"].as_str().unwrap().as_bytes(), &bytes[..]);
        assert_eq!(fnv1a64(&bytes), u(&c["hash"]), "name {:?}", c["name"]);
    }
}

#[test]
fn stage_seeds_and_their_streams() {
    let v = vectors();
    for c in list(&v, "stage_seeds") {
        let run = u(&c["run_seed"]);
        let name = c["stage"].as_str().unwrap();
        assert_eq!(name.as_bytes(), &name_bytes(&c["stage_hex"])[..]);
        let want = u(&c["stage_seed"]);
        assert_eq!(stage_seed(run, name), want, "run {run:#x} stage {name:?}");
        assert_eq!(derive(run, fnv1a64(name)), want);
        let mut s = Stream::for_stage(run, name);
        assert_eq!(s.seed(), want);
        let got: Vec<u64> = (0..4).map(|_| s.next_u64()).collect();
        assert_eq!(got, us(&c["first_outputs"]));
        // ForStage(r, name) is New(r).Child(name).
        assert_eq!(Stream::new(run).child(name).seed(), want);
    }
}

#[test]
fn streams_uint64_float64_and_below() {
    let v = vectors();
    for c in list(&v, "streams") {
        let seed = u(&c["seed"]);
        let mut s = Stream::new(seed);
        let got: Vec<u64> = (0..8).map(|_| s.next_u64()).collect();
        assert_eq!(got, us(&c["uint64"]));
        let mut s = Stream::new(seed);
        for f in c["float64"].as_array().unwrap() {
            let x = s.next_f64();
            assert_eq!(x.to_bits(), u(&f["bits"]), "seed {seed:#x}");
            assert_eq!(x, f["value"].as_f64().unwrap());
            assert!((0.0..1.0).contains(&x));
        }
        let ns = list(c, "uint64n");
        for case in ns {
            let n = u(&case["n"]);
            let mut s = Stream::new(seed);
            let got: Vec<u64> = (0..8).map(|_| s.below(n)).collect();
            assert_eq!(got, us(&case["values"]), "seed {seed:#x} n {n}");
            assert!(got.iter().all(|&x| x < n));
        }
    }
}

#[test]
#[should_panic(expected = "n == 0")]
fn below_zero_panics() {
    Stream::new(1).below(0);
}

#[test]
fn forks_read_only_the_key() {
    let v = vectors();
    for c in list(&v, "forks") {
        let (seed, index) = (u(&c["seed"]), u(&c["index"]));
        let mut parent = Stream::new(seed);
        let before = parent.fork(index);
        parent.next_u64();
        parent.next_u64();
        let mut f = parent.fork(index);
        assert_eq!(f, before, "a fork does not depend on draws");
        assert_eq!(f.seed(), u(&c["derived_seed"]));
        let got: Vec<u64> = (0..4).map(|_| f.next_u64()).collect();
        assert_eq!(got, us(&c["first_outputs"]));
    }
}

#[test]
fn children_are_forks_of_the_label_hash() {
    let v = vectors();
    for c in list(&v, "children") {
        let seed = u(&c["seed"]);
        let label = c["label"].as_str().unwrap();
        assert_eq!(label.as_bytes(), &name_bytes(&c["label_hex"])[..]);
        let mut ch = Stream::new(seed).child(label);
        assert_eq!(ch.seed(), u(&c["derived_seed"]));
        assert_eq!(ch, Stream::new(seed).fork(fnv1a64(label)));
        let got: Vec<u64> = (0..4).map(|_| ch.next_u64()).collect();
        assert_eq!(got, us(&c["first_outputs"]));
    }
}

#[test]
fn mix64_is_splitmix_output() {
    // Derive(key, word) = Mix64((Mix64(key + GAMMA) ^ word) + GAMMA)
    let mut a = SplitMix64(5);
    let first = a.next_u64();
    assert_eq!(first, mix64(5u64.wrapping_add(pipehost::seed::GAMMA)));
    let mut b = SplitMix64(first ^ 9);
    assert_eq!(derive(5, 9), b.next_u64());
}
