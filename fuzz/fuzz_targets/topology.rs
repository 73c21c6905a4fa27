//! Fuzz target: arbitrary text through the topology parser (`classify-log --topology`), and the
//! queries correlation makes on what it accepts. None of them may panic or loop.
#![no_main]

use devheal_detect::Topology;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(topology) = Topology::parse(text, "fuzz") {
        for word in text.split_ascii_whitespace().take(64) {
            let _ = topology.parent(word);
            let _ = topology.is_upstream_of(word, word);
            let _ = topology.is_upstream_of("0000:00:01.0", word);
            let _ = topology.links(word, "0000:01:00.0");
        }
    }
});
