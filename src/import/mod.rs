//! `edgebus import …`: a seed system's configuration, written as edgebus's.

pub mod edgewatch;
