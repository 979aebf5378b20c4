//! Unit tests: hand-built images and never-panic loops.
