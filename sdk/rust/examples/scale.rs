//! The stage of docs/sdk-rust.md, compiled by `cargo test` so the guide
//! stays true. Run it through pipehost like any plugin.

use pipehost::{serve, DType, Error, Port, RunContext, Stage};

pipehost::params! {
    /// The stage's parameters: each name is written once, here.
    struct Scale {
        /// Multiplier.
        factor: f64 = 2.0,
        /// Add seeded noise in [0, 1e-3).
        jitter: bool = false,
    }
}

fn scale(ctx: &RunContext, p: Scale) -> Result<(), Error> {
    if !p.factor.is_finite() {
        return Err(Error::param("factor", "must be finite"));
    }
    let input = ctx.input::<f32>("in")?; // read-only, zero-copy
    let mut out = ctx.output::<f32>("out")?; // writable, zero-copy
    let _span = ctx.timed("scale"); // a timed subtask, ends at scope end
    let width = out.width();
    for (y, row) in out.rows_mut().enumerate() {
        if y % 256 == 0 {
            ctx.check_cancelled()?; // the host may cancel (timeout, Ctrl-C)
            ctx.progress(y as f64 / input.height() as f64, "scaling");
        }
        let mut rng = ctx.rng().fork(y as u64); // same bits with any worker count
        for (x, o) in row.iter_mut().enumerate() {
            let noise = if p.jitter { rng.next_f64() * 1e-3 } else { 0.0 };
            *o = (f64::from(input.at(x, y)) * p.factor + noise) as f32;
        }
    }
    ctx.info(format!("scaled a {width}x{} grid", input.height()));
    ctx.metric("factor", p.factor);
    Ok(())
}

fn main() {
    serve(vec![Stage::new("demo.scale", "1.0.0", scale)
        .doc("Multiplies a grid by a constant.")
        .input(Port::grid("in", DType::F32))
        .output(Port::grid("out", DType::F32))
        .concurrent(true)])
}
