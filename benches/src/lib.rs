//! Shared fixtures for ward's benchmarks.
