//! The in-container lifecycle binary: `/tmp/lifecycle/builder`.

fn main() {
    std::process::exit(1);
}
