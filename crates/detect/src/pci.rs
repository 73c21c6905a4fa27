//! PCI addresses as kernel messages print them, normalised to `dddd:bb:dd.f`.

/// Normalise a PCI address token to lower-case `dddd:bb:dd.f`.
///
/// Accepts `dddd:bb:dd.f`, `dddd:bb:dd` (the NVIDIA driver's Xid form, function 0),
/// `bb:dd.f` (domain 0) and domains longer than four digits (VMD). Returns `None` for anything
/// that is not a PCI address.
pub fn normalize_pci_address(token: &str) -> Option<String> {
    let token = token.trim_end_matches([',', ':', ')', ']', ';']);
    let (body, function) = match token.rsplit_once('.') {
        Some((body, function)) => (body, function),
        None => (token, "0"),
    };
    if function.len() != 1 || !matches!(function.as_bytes()[0], b'0'..=b'7') {
        return None;
    }
    let parts: Vec<&str> = body.split(':').collect();
    let (domain, bus, device) = match parts.as_slice() {
        [domain, bus, device] => (*domain, *bus, *device),
        [bus, device] if token.contains('.') => ("0000", *bus, *device),
        _ => return None,
    };
    let hex = |s: &str, min: usize, max: usize| {
        (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
    };
    if !hex(domain, 4, 8) || !hex(bus, 2, 2) || !hex(device, 2, 2) {
        return None;
    }
    let device_number = u8::from_str_radix(device, 16).ok()?;
    if device_number > 0x1f {
        return None;
    }
    Some(format!(
        "{}:{}:{}.{}",
        domain.to_ascii_lowercase(),
        bus.to_ascii_lowercase(),
        device.to_ascii_lowercase(),
        function
    ))
}

/// The address of a PCIe requester id (`id=00e0`, bus << 8 | device << 3 | function) in the
/// domain of `domain_of` (the reporting port's address).
pub fn address_from_requester_id(requester_id: u16, domain_of: Option<&str>) -> String {
    let domain = domain_of.and_then(|a| a.split(':').next()).unwrap_or("0000");
    format!("{}:{:02x}:{:02x}.{}", domain, requester_id >> 8, (requester_id >> 3) & 0x1f, requester_id & 0x7)
}

/// The first PCI address among the whitespace-separated tokens of `text`, normalised.
pub fn first_pci_address(text: &str) -> Option<String> {
    text.split_ascii_whitespace().find_map(|token| {
        let token = token.strip_prefix("PCI:").unwrap_or(token);
        normalize_pci_address(token)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_the_forms_kernels_print() {
        assert_eq!(normalize_pci_address("0000:3b:00").as_deref(), Some("0000:3b:00.0"));
        assert_eq!(normalize_pci_address("0000:3B:00.1").as_deref(), Some("0000:3b:00.1"));
        assert_eq!(normalize_pci_address("3b:00.0").as_deref(), Some("0000:3b:00.0"));
        assert_eq!(normalize_pci_address("10000:01:00.0:").as_deref(), Some("10000:01:00.0"));
        assert_eq!(normalize_pci_address("0000:3b:00.0:").as_deref(), Some("0000:3b:00.0"));
    }

    #[test]
    fn rejects_non_addresses() {
        for s in
            ["", "3b:00", "0000:3b:20.0", "0000:3b:00.8", "zzzz:3b:00.0", "12:34:56", "0000:3b:00.0.1", "."]
        {
            assert_eq!(normalize_pci_address(s), None, "{s}");
        }
    }

    #[test]
    fn requester_ids() {
        assert_eq!(address_from_requester_id(0x0018, Some("0000:00:03.0")), "0000:00:03.0");
        assert_eq!(address_from_requester_id(0x0100, None), "0000:01:00.0");
        assert_eq!(address_from_requester_id(0x3b0a, Some("0001:00:01.0")), "0001:3b:01.2");
    }

    #[test]
    fn finds_first_address() {
        assert_eq!(first_pci_address("pcieport 0000:00:01.0: AER:").as_deref(), Some("0000:00:01.0"));
        assert_eq!(first_pci_address("GPU at PCI:0000:3b:00: GPU-1").as_deref(), Some("0000:3b:00.0"));
        assert_eq!(first_pci_address("no address here"), None);
    }
}
