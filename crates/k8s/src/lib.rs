//! devheal-k8s: Kubernetes objects into the engine's types.
#![forbid(unsafe_code)]
