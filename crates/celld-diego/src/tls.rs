//! Mutual TLS from the PEM files a Diego component is given (a CA, a
//! certificate, its key), as BBS, Locket and the rep use it: a server requires
//! a client certificate the CA signed; a client presents its own and trusts
//! only servers the CA signed. The loader is celld-transport's, with its
//! checks for the identity's use (`TlsIdentity::load(files, usage)`), so a
//! deployment mistake fails start-up with the file's name and its flaw.

pub use celld_transport::tls::{TlsError, TlsFiles as PemFiles, TlsMaterial as TlsIdentity, Usage};

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
