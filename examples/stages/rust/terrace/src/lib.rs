//! `example.terrace-rust`: cuts land into terraces. Step heights are drawn
//! from the stage's seeded stream, so a run seed gives the same terraces in
//! every run; the sea (at or below 0 m) is left as it is. Besides the grid
//! it writes a small text blob with the step heights through the streaming
//! output writer.

use std::io::Write;

use pipehost::{DType, Error, Port, RunContext, Stage};

pipehost::params! {
    /// The parameters of `example.terrace-rust`.
    pub struct TerraceParams {
        /// Number of terraces between 0 m and the highest land cell, 1..256.
        pub steps: u32 = 8,
        /// How far each step height may move from an even spacing, as a
        /// fraction of the spacing, 0..0.5.
        pub jitter: f64 = 0.3,
    }
}

/// The step heights for land up to `top` metres: 0 and then `steps - 1`
/// evenly spaced levels, each moved by up to `jitter` of the spacing with
/// one draw from `rng`; increasing, since `jitter` is at most 0.5.
pub fn step_heights(rng: &mut pipehost::Stream, top: f64, steps: u32, jitter: f64) -> Vec<f64> {
    let spacing = top / f64::from(steps);
    let mut heights = vec![0.0];
    for i in 1..steps {
        heights.push(spacing * (f64::from(i) + jitter * (2.0 * rng.next_f64() - 1.0)));
    }
    heights
}

/// Runs one instance: grid `elevation` in, grids `terraced` out, blob
/// `steps` out.
pub fn run(ctx: &RunContext, p: TerraceParams) -> Result<(), Error> {
    if !(1..=256).contains(&p.steps) {
        return Err(Error::param(
            "steps",
            format!("{} is out of range 1..256", p.steps),
        ));
    }
    if !(0.0..=0.5).contains(&p.jitter) {
        return Err(Error::param(
            "jitter",
            format!("{} is out of range 0..0.5", p.jitter),
        ));
    }
    let input = ctx.input::<f32>("elevation")?;
    let mut out = ctx.output::<f32>("terraced")?;
    let top = input.iter().fold(0.0f32, |m, &v| m.max(v));
    let heights = step_heights(&mut ctx.rng(), f64::from(top), p.steps, p.jitter);
    {
        let _s = ctx.timed("terrace");
        for (o, &v) in out.iter_mut().zip(input.iter()) {
            *o = if v <= 0.0 {
                v
            } else {
                // The highest step at or below v (the first one is 0).
                let k = heights.partition_point(|&h| h <= f64::from(v));
                heights[k.saturating_sub(1)] as f32
            };
        }
    }
    let mut w = ctx.output_writer("steps")?;
    for h in &heights {
        writeln!(w, "{h:.3}")?;
    }
    ctx.metric("top_m", f64::from(top));
    ctx.info(format!("{} terraces up to {top:.0} m", p.steps));
    Ok(())
}

/// The stage's declaration.
pub fn stage() -> Stage {
    Stage::new("example.terrace-rust", "1.0.0", run)
        .doc("Cuts land into terraces with seeded step heights; the sea is left as it is.")
        .input(Port::grid("elevation", DType::F32))
        .output(Port::grid("terraced", DType::F32))
        .output(Port::blob("steps").doc("the step heights in metres, one per line"))
        .concurrent(true)
}
