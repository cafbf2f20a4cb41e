//! cellctl's binary; its code is `celld_cli::cellctl`. A release build
//! instantiates generic code in every crate that uses it, and this binary is
//! rebuilt on every change to the daemon crate (it is in the daemon's package
//! because the integration tests run it): kept this small, that rebuild is a
//! link, not a minute of code generation.

fn main() {
    celld_cli::cellctl::main();
}
