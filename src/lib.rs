//! Manta.
