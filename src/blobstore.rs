//! The blobstore: app packages, droplets, build caches and buildpacks.
