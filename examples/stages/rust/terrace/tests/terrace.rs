//! `example.terrace-rust` in the SDK's test harness.

use pipehost::seed::Stream;
use pipehost::testing::Harness;

fn ramp() -> Vec<f32> {
    // 64×32: the sea on the left, land rising to 1000 m on the right.
    (0..64 * 32)
        .map(|i| ((i % 64) as f32 - 16.0) * 1000.0 / 47.0)
        .collect()
}

#[test]
fn land_is_terraced_with_the_stages_seeded_steps() {
    let input = ramp();
    let out = Harness::new(terrace::stage())
        .seed(2026)
        .name("terrace")
        .param("steps", 4)
        .input("elevation", &input)
        .run()
        .ok()
        .unwrap();
    let g = out.output::<f32>("terraced").unwrap();
    // The same stream the stage drew from, recomputed from its seed.
    let heights = terrace::step_heights(&mut Stream::new(out.stage_seed()), 1000.0, 4, 0.3);
    for (i, (&o, &v)) in g.iter().zip(&input).enumerate() {
        if v <= 0.0 {
            assert_eq!(o, v, "sea cell {i} changed");
        } else {
            assert!(
                heights.iter().any(|&h| h as f32 == o),
                "cell {i}: {o} is no step"
            );
            assert!(o <= v, "cell {i}: terrace {o} above the ground {v}");
        }
    }
    let text = std::str::from_utf8(out.output_bytes("steps").unwrap()).unwrap();
    assert_eq!(text.lines().count(), 4);
    assert_eq!(out.metrics()["top_m"], 1000.0);

    // Another run seed, other terraces; the same one, the same bytes.
    let again = |seed| {
        Harness::new(terrace::stage())
            .seed(seed)
            .name("terrace")
            .param("steps", 4)
            .input("elevation", &input)
            .run()
            .ok()
            .unwrap()
            .output_bytes("steps")
            .unwrap()
            .to_vec()
    };
    assert_eq!(again(2026), text.as_bytes());
    assert_ne!(again(2027), text.as_bytes());
}

#[test]
fn params_out_of_range_are_refused() {
    let e = Harness::new(terrace::stage())
        .param("steps", 0)
        .input("elevation", &ramp())
        .run()
        .ok()
        .unwrap_err();
    assert!(e.message().contains("\"steps\": 0 is out of range"), "{e}");
}
