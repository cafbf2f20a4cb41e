//! Staging: the buildpack registry and the stager.
