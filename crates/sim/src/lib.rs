//! devheal-sim: the deterministic fleet simulator.
#![forbid(unsafe_code)]
