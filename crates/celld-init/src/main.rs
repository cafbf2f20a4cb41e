//! `celld-init FD`: a container's init, serving the listening socket `FD`
//! that the runtime's helper left open across the exec.

fn main() {
    let fd = std::env::args().nth(1).and_then(|a| a.parse::<i32>().ok()).filter(|fd| *fd > 2);
    match fd {
        Some(fd) => celld_init::init::run(fd),
        None => {
            eprintln!("usage: celld-init FD (started by celld's runtime as a container's init)");
            std::process::exit(2);
        }
    }
}
