//! The stage of docs/sdk-rust.md, compiled by `cargo test` so the guide
//! stays true. Run it through pipehost like any plugin.

use pipehost::seed::Stream;
use pipehost::{serve, DType, Error, ParamSpec, ParamValues, Params, Port, RunContext, Stage};

/// The stage's parameters, decoded from the run's values.
struct Scale {
    factor: f64,
    jitter: bool,
}

impl Params for Scale {
    fn specs() -> Vec<ParamSpec> {
        vec![
            ParamSpec::float("factor").default(2.0).doc("multiplier"),
            ParamSpec::bool("jitter")
                .default(false)
                .doc("add seeded noise in [0, 1e-3)"),
        ]
    }
    fn decode(p: &ParamValues) -> Result<Self, Error> {
        Ok(Scale {
            factor: p.get("factor")?,
            jitter: p.get("jitter")?,
        })
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
        let mut rng = Stream::new(ctx.seed()).fork(y as u64); // same bits with any worker count
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
