//! testdata/topology/*.json: edges, neighbours, transforms, geometry,
//! sampling, loading and the pyramid (docs/topology.md).

use pipehost::pb;
use pipehost::topology::{self, Level, Options, Topology, Wrap};
use serde_json::Value;

mod common;
use common::vectors;

fn load(name: &str) -> Value {
    vectors(
        &format!("topology/{name}.json"),
        &format!("pipehost.topology.{name}/1"),
    )
}

fn cases(v: &Value) -> &Vec<Value> {
    let c = v["cases"].as_array().expect("cases");
    assert!(!c.is_empty());
    c
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn n(v: &Value) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

fn topo(t: &Value) -> Topology {
    let wrap = |k: &str| Some(Wrap::parse(t[k].as_str().unwrap()).unwrap());
    Topology::new(
        t["kind"].as_str().unwrap(),
        n(&t["width"]),
        n(&t["height"]),
        wrap("wrap_x"),
        wrap("wrap_y"),
        f(&t["radius"]),
        f(&t["minor_radius"]),
    )
    .unwrap_or_else(|e| panic!("{t}: {e}"))
}

const TOL: f64 = 1e-12;

#[track_caller]
fn close(got: f64, want: f64, scale: f64, what: &str) {
    let s = want.abs().max(scale).max(1.0);
    assert!(
        (got - want).abs() <= TOL * s,
        "{what}: got {got:e}, want {want:e}"
    );
}

#[track_caller]
fn close_vec(got: &[f64], want: &Value, what: &str) {
    let want: Vec<f64> = want.as_array().unwrap().iter().map(f).collect();
    assert_eq!(got.len(), want.len(), "{what}: length");
    let s = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    for (g, w) in got.iter().zip(&want) {
        let tol = TOL * s.max(1.0);
        assert!((g - w).abs() <= tol, "{what}: got {got:?}, want {want:?}");
    }
}

fn opt_index(v: &Value) -> Option<usize> {
    let i = n(v);
    (i >= 0).then_some(i as usize)
}

#[test]
fn neighbours() {
    let v = load("neighbours");
    let off8: Vec<(i64, i64)> = v["offsets8"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (n(&o[0]), n(&o[1])))
        .collect();
    assert_eq!(off8, topology::OFFSETS8.to_vec());
    let off4: Vec<(i64, i64)> = v["offsets4"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (n(&o[0]), n(&o[1])))
        .collect();
    assert_eq!(off4, topology::OFFSETS4.to_vec());
    for c in cases(&v) {
        let t = topo(&c["topology"]);
        let g = t.grid();
        let cells = c["cells"].as_array().unwrap();
        assert_eq!(cells.len(), g.len());
        for cell in cells {
            let i = n(&cell["index"]) as usize;
            assert_eq!(g.xy(i), (n(&cell["x"]) as usize, n(&cell["y"]) as usize));
            let want4: Vec<Option<usize>> = cell["n4"]
                .as_array()
                .unwrap()
                .iter()
                .map(opt_index)
                .collect();
            let want8: Vec<Option<usize>> = cell["n8"]
                .as_array()
                .unwrap()
                .iter()
                .map(opt_index)
                .collect();
            assert_eq!(
                g.neighbors4(i).to_vec(),
                want4,
                "{} cell {i}",
                c["topology"]
            );
            assert_eq!(
                g.neighbors8(i).to_vec(),
                want8,
                "{} cell {i}",
                c["topology"]
            );
            for (k, (dx, dy)) in topology::OFFSETS8.iter().enumerate() {
                assert_eq!(g.step(i, *dx, *dy), want8[k]);
                // resolve agrees with step; resolve_clamped with it wherever step finds a cell.
                let (x, y) = g.xy(i);
                let r = g
                    .resolve(x as i64 + dx, y as i64 + dy)
                    .map(|(x, y)| g.index(x, y));
                assert_eq!(r, want8[k]);
                if let Some(j) = want8[k] {
                    let (rx, ry) = g.resolve_clamped(x as i64 + dx, y as i64 + dy);
                    assert_eq!(g.index(rx, ry), j);
                }
            }
        }
    }
}

#[test]
fn transforms() {
    let v = load("transforms");
    for c in cases(&v) {
        let t = topo(&c["topology"]);
        let g = *t.grid();
        let what = c["topology"].to_string();
        assert_eq!(t.embed_dim() as i64, n(&c["embed_dim"]), "{what}");
        let sphere = t.kind() == "sphere";
        for cell in c["cells"].as_array().unwrap() {
            let (x, y) = (n(&cell["x"]) as usize, n(&cell["y"]) as usize);
            assert_eq!(g.index(x, y) as i64, n(&cell["index"]));
            let (fx, fy) = g.center(x, y);
            close(fx, f(&cell["fx"]), 1.0, &what);
            close(fy, f(&cell["fy"]), 1.0, &what);
            let (u, vv) = g.uv(x, y);
            close(u, f(&cell["u"]), 1.0, &what);
            close(vv, f(&cell["v"]), 1.0, &what);
            assert_eq!(g.cell_at_uv(u, vv), Some((x, y)), "{what}");
            if sphere {
                let (lon, lat) = t.lon_lat(x, y).unwrap();
                close(lon, f(&cell["lon"]), 1.0, &what);
                close(lat, f(&cell["lat"]), 1.0, &what);
                close_vec(&topology::unit_vector(lon, lat), &cell["unit"], &what);
                assert_eq!(t.cell_of(lon, lat), Some((x, y)), "{what}");
            } else {
                assert!(t.lon_lat(x, y).is_none());
            }
            close_vec(&t.embed(fx, fy)[..t.embed_dim()], &cell["embed"], &what);
        }
        for p in c["points"].as_array().unwrap() {
            let (fx, fy) = (f(&p["fx"]), f(&p["fy"]));
            close(fx / g.width() as f64, f(&p["u"]), 1.0, &what);
            close(fy / g.height() as f64, f(&p["v"]), 1.0, &what);
            if sphere {
                let (lon, lat) = t.lon_lat_at(fx, fy).unwrap();
                close(lon, f(&p["lon"]), 1.0, &what);
                close(lat, f(&p["lat"]), 1.0, &what);
                close_vec(&topology::unit_vector(lon, lat), &p["unit"], &what);
            }
            close_vec(&t.embed(fx, fy)[..t.embed_dim()], &p["embed"], &what);
        }
        if sphere {
            let list = c["cell_of"].as_array().unwrap();
            assert!(!list.is_empty());
            for q in list {
                let got = t.cell_of(f(&q["lon"]), f(&q["lat"]));
                assert_eq!(
                    got,
                    Some((n(&q["x"]) as usize, n(&q["y"]) as usize)),
                    "{what} {q}"
                );
            }
        }
    }
}

#[test]
fn areas() {
    let v = load("areas");
    for c in cases(&v) {
        let t = topo(&c["topology"]);
        let what = c["topology"].to_string();
        let rows = c["row_areas"].as_array().unwrap();
        assert_eq!(rows.len(), t.height());
        let mut sum = 0.0;
        for (y, a) in rows.iter().enumerate() {
            close(t.row_area(y), f(a), 1.0, &what);
            close(t.cell_area(y * t.width()), f(a), 1.0, &what);
            sum += t.row_area(y) * t.width() as f64;
        }
        close(t.area(), f(&c["total_area"]), 1.0, &what);
        // The cells tile the surface.
        assert!(
            (sum - t.area()).abs() <= 1e-9 * t.area(),
            "{what}: cells sum to {sum}, area {}",
            t.area()
        );
    }
}

#[test]
fn distances() {
    let v = load("distances");
    for c in cases(&v) {
        let t = topo(&c["topology"]);
        let what = c["topology"].to_string();
        let scale = t.area().sqrt();
        let pairs = c["pairs"].as_array().unwrap();
        assert!(!pairs.is_empty());
        for p in pairs {
            let (a, b) = (n(&p["a"]) as usize, n(&p["b"]) as usize);
            close(
                t.distance(a, b),
                f(&p["distance"]),
                scale,
                &format!("{what} {a}-{b}"),
            );
        }
    }
}

#[test]
fn sampling() {
    let v = load("sampling");
    for c in cases(&v) {
        let t = topo(&c["topology"]);
        let what = c["topology"].to_string();
        let data: Vec<f32> = c["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| f(x) as f32)
            .collect();
        for s in c["samples"].as_array().unwrap() {
            let (fx, fy) = (f(&s["fx"]), f(&s["fy"]));
            let got = t.grid().sample(&data, fx, fy);
            let want = &s["value"];
            if want.is_null() || want.as_str() == Some("NaN") {
                assert!(got.is_nan(), "{what} ({fx}, {fy}): {got}");
            } else {
                close(got, f(want), 1.0, &format!("{what} ({fx}, {fy})"));
            }
        }
        // Non-finite coordinates give NaN; cell centres give the data.
        assert!(t.grid().sample(&data, f64::NAN, 0.5).is_nan());
        assert!(t.grid().sample(&data, 0.5, f64::INFINITY).is_nan());
        let (cx, cy) = t.grid().center(1, 1);
        assert_eq!(
            t.grid().sample(&data, cx, cy),
            f64::from(data[t.width() + 1])
        );
    }
}

#[test]
fn loading() {
    let v = load("load");
    for c in cases(&v) {
        let kind = c["kind"].as_str().unwrap();
        let o = &c["options"];
        let edge = match o["edge"].as_str().unwrap() {
            "" => None,
            e => Some(Wrap::parse(e).unwrap()),
        };
        let opts = Options {
            radius: f(&o["radius"]),
            minor_radius: f(&o["minor_radius"]),
            edge,
        };
        let got = Topology::load(kind, n(&c["width"]), n(&c["height"]), opts);
        if c["error"].as_bool().unwrap() {
            assert!(got.is_err(), "{c} loaded");
            continue;
        }
        let t = got.unwrap_or_else(|e| panic!("{c}: {e}"));
        let want = topo(&c["topology"]);
        assert_eq!(t.kind(), want.kind());
        assert_eq!((t.width(), t.height()), (want.width(), want.height()));
        assert_eq!(t.grid().wrap_x(), want.grid().wrap_x(), "{c}");
        assert_eq!(t.grid().wrap_y(), want.grid().wrap_y(), "{c}");
        close(t.radius(), want.radius(), 1.0, "radius");
        close(t.minor_radius(), want.minor_radius(), 1.0, "minor radius");
        // The wire form round-trips with the native size.
        let back =
            Topology::from_proto(&t.to_proto(), t.width() as u32, t.height() as u32).unwrap();
        assert_eq!(back, t);
    }
    // Unknown wire values are errors, unspecified ones take defaults.
    let p = pb::Topology {
        kind: "torus".into(),
        wrap_x: 99,
        ..Default::default()
    };
    assert!(Topology::from_proto(&p, 8, 8).is_err());
    let p = pb::Topology {
        kind: "plane".into(),
        ..Default::default()
    };
    assert_eq!(
        Topology::from_proto(&p, 8, 8).unwrap().grid().wrap_x(),
        Wrap::Clamp
    );
}

#[test]
fn pyramid() {
    let v = load("pyramid");
    for c in cases(&v) {
        let kind = c["kind"].as_str().unwrap();
        let (w, h) = (n(&c["width"]), n(&c["height"]));
        let max = n(&c["max_levels"]);
        assert_eq!(
            topology::max_levels(kind, w as usize, h as usize) as i64,
            max,
            "{kind} {w}x{h}"
        );
        let levels = topology::levels(kind, w, h, max).unwrap();
        let want: Vec<Level> = c["levels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| Level {
                level: n(&l["level"]) as u32,
                width: n(&l["width"]) as usize,
                height: n(&l["height"]) as usize,
            })
            .collect();
        assert_eq!(levels, want, "{kind} {w}x{h}");
        for l in &levels {
            assert_eq!(Level::from_proto(&l.to_proto()), *l);
        }
        let Some(maps) = c["mappings"].as_array() else {
            continue;
        };
        for m in maps {
            let fine = levels[n(&m["fine"]) as usize];
            let coarse = levels[n(&m["coarse"]) as usize];
            let parents: Vec<usize> = m["parents"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| n(p) as usize)
                .collect();
            assert_eq!(parents.len(), fine.width * fine.height);
            for (i, &p) in parents.iter().enumerate() {
                assert_eq!(
                    topology::parent_index(fine, coarse, i),
                    p,
                    "{kind} {w}x{h} fine {i}"
                );
            }
            let children = m["children"].as_array().unwrap();
            assert_eq!(children.len(), coarse.width * coarse.height);
            for (j, ch) in children.iter().enumerate() {
                let want: Vec<usize> = ch
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| n(x) as usize)
                    .collect();
                assert_eq!(
                    topology::child_indices(fine, coarse, j),
                    want,
                    "{kind} {w}x{h} coarse {j}"
                );
            }
        }
    }
    let invalid = v["invalid"].as_array().unwrap();
    assert!(!invalid.is_empty());
    for c in invalid {
        let r = topology::levels(
            c["kind"].as_str().unwrap(),
            n(&c["width"]),
            n(&c["height"]),
            n(&c["levels"]),
        );
        assert!(r.is_err(), "{c} accepted");
    }
}
