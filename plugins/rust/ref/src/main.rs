//! The reference stages in Rust, `ref.noise-rust` and `ref.blur-rust`
//! (docs/reference-stage.md): arithmetic specified so that the Go, C++ and
//! Rust implementations give bit-identical outputs.

use pipehost::{serve, DType, Error, Port, RunContext, Stage};

mod kernels;

pipehost::params! {
    struct Noise {
        /// number of octaves, 1..8
        octaves: i64 = 4,
        /// lattice spacing of octave 0 in cells: a power of two ≥ 2^(octaves-1) dividing width and height
        cell: i64 = 16,
    }
}

pipehost::params! {
    struct Blur {
        /// half-width of the box, 0..16
        radius: i64 = 1,
    }
}

fn noise(ctx: &RunContext, p: Noise) -> Result<(), Error> {
    let mut out = ctx.output::<f32>("out")?;
    let (w, h) = (out.width(), out.height());
    let cfg = kernels::NoiseConfig::new(p.octaves, p.cell, w, h)?;
    let lattices = {
        let _s = ctx.timed("lattice");
        kernels::lattices(ctx.seed(), &cfg)
    };
    let _s = ctx.timed("fill");
    let rows = out.rows_mut();
    for (y, row) in rows.enumerate() {
        if y % 64 == 0 {
            ctx.check_cancelled()?;
            ctx.progress(y as f64 / h as f64, "noise");
        }
        kernels::noise_row(&cfg, &lattices, y, row);
    }
    ctx.progress(1.0, "noise");
    Ok(())
}

fn blur(ctx: &RunContext, p: Blur) -> Result<(), Error> {
    if !(0..=16).contains(&p.radius) {
        return Err(Error::param(
            "radius",
            format!("{} is out of range 0..16", p.radius),
        ));
    }
    let input = ctx.input::<f32>("in")?;
    let mut out = ctx.output::<f32>("out")?;
    let topo = ctx.topology()?;
    let grid = *topo.grid();
    if (input.width(), input.height()) != (grid.width(), grid.height())
        || (out.width(), out.height()) != (grid.width(), grid.height())
    {
        return Err(Error::new(format!(
            "grid sizes differ: input {}x{}, output {}x{}, topology {}x{}",
            input.width(),
            input.height(),
            out.width(),
            out.height(),
            grid.width(),
            grid.height()
        )));
    }
    let _s = ctx.timed("blur");
    let h = grid.height();
    for (y, row) in out.rows_mut().enumerate() {
        if y % 64 == 0 {
            ctx.check_cancelled()?;
            ctx.progress(y as f64 / h as f64, "blur");
        }
        kernels::blur_row(&grid, input.data(), p.radius as usize, y, row);
    }
    ctx.progress(1.0, "blur");
    Ok(())
}

fn main() {
    serve(vec![
        Stage::new("ref.noise-rust", "1.0.0", noise)
            .doc("Integer value noise (docs/reference-stage.md), bit-identical with ref.noise-go and ref.noise-cpp.")
            .output(Port::grid("out", DType::F32))
            .concurrent(true),
        Stage::new("ref.blur-rust", "1.0.0", blur)
            .doc("Box blur that respects the topology (docs/reference-stage.md), bit-identical with ref.blur-go and ref.blur-cpp.")
            .input(Port::grid("in", DType::F32))
            .output(Port::grid("out", DType::F32))
            .concurrent(true),
    ])
}
