//! The plugin executable of `example.terrace-rust`.

fn main() {
    pipehost::serve(vec![terrace::stage()])
}
