//! The ssh proxy's user names: `cf:APP_GUID/INDEX` and
//! `diego:PROCESS_GUID/INDEX`. What parses prints back to the same login.
#![no_main]

use celld::sshproxy::Login;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let user = String::from_utf8_lossy(data);
    if let Ok(login) = Login::parse(&user) {
        let (realm, id, index) = match &login {
            Login::Cf { app, index } => ("cf", app, index),
            Login::Diego { process_guid, index } => ("diego", process_guid, index),
        };
        assert!(!id.is_empty());
        assert_eq!(Login::parse(&format!("{realm}:{id}/{index}")).ok(), Some(login.clone()));
    }
});
