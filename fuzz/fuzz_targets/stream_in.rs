//! Garden stream-in: the tar stream init unpacks into a container directory
//! (`runtime::init::unpack_tar_stream`, the same call init makes). Nothing
//! may land outside the destination, whatever the entries, links and names.
#![no_main]

use celld_fuzz::Scratch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = Scratch::new();
    std::fs::create_dir(&s.dest).expect("dest");
    let _ = celld::runtime::init::unpack_tar_stream(data, &s.dest);
    // The tar crate may leave a symlink pointing anywhere (it is the user's
    // own container); what it must never do is write through one.
    s.check(false);
});
