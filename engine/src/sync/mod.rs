//! Repository-to-repository sync and seed bundles. Not implemented yet.
