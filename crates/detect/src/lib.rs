//! devheal-detect: kernel-log parsing, catalogs, correlation and the /dev/kmsg reader.
#![forbid(unsafe_code)]
