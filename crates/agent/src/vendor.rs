//! Which vendor library is which: amdsmi ([`crate::amd`]) and hlml ([`crate::gaudi`]), each
//! with its source's name, health source, resource and vendor, for the running agent
//! (`run/accelerators.rs`) and `--once` alike. Above both libraries' modules, which know only
//! the shared thread ([`crate::library`]).

use devheal_core::{HealthSource, Vendor};

/// The vendor libraries the agent loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Library {
    /// amdsmi ([`crate::amd`]).
    Amd,
    /// hlml ([`crate::gaudi`]).
    Gaudi,
}

impl Library {
    pub fn source_name(self) -> &'static str {
        match self {
            Library::Amd => crate::amd::AMD_SMI_SOURCE,
            Library::Gaudi => crate::gaudi::HLML_SOURCE,
        }
    }

    pub fn health_source(self) -> HealthSource {
        match self {
            Library::Amd => HealthSource::AmdSmi,
            Library::Gaudi => HealthSource::Hlml,
        }
    }

    pub fn resource(self) -> &'static str {
        match self {
            Library::Amd => crate::amd::AMD_GPU_RESOURCE,
            Library::Gaudi => crate::gaudi::GAUDI_RESOURCE,
        }
    }

    pub fn vendor(self) -> Vendor {
        match self {
            Library::Amd => Vendor::Amd,
            Library::Gaudi => Vendor::Intel,
        }
    }

    pub fn devices_noun(self) -> &'static str {
        match self {
            Library::Amd => "AMD GPU(s)",
            Library::Gaudi => "Gaudi device(s)",
        }
    }

    /// The source's status line: how many devices, and any the library could not read (a lost
    /// device is worth seeing there).
    pub fn inventory_message(self, found: usize, unreadable: &[String]) -> String {
        let mut message = format!("{found} {}", self.devices_noun());
        if let Some(first) = unreadable.first() {
            tracing::warn!(library = self.source_name(), "devices left out: {}", unreadable.join("; "));
            message.push_str(&format!("; {} unreadable ({first}", unreadable.len()));
            if unreadable.len() > 1 {
                message.push_str(", …");
            }
            message.push(')');
        }
        message
    }

    /// Whether sysfs was read and shows none of this library's devices.
    pub fn absent_from(self, accelerators: &crate::accel::AcceleratorInventory) -> bool {
        match self {
            Library::Amd => accelerators.has_no_amd_gpu(),
            Library::Gaudi => accelerators.has_no_gaudi(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_counts_the_devices_and_names_the_first_unreadable_one() {
        assert_eq!(Library::Gaudi.inventory_message(8, &[]), "8 Gaudi device(s)");
        let lost = "hlml call hlml_device_get_serial failed with status 15 on device #3".to_string();
        assert_eq!(
            Library::Gaudi.inventory_message(7, std::slice::from_ref(&lost)),
            format!("7 Gaudi device(s); 1 unreadable ({lost})")
        );
        assert_eq!(
            Library::Amd.inventory_message(6, &[lost.clone(), lost.clone()]),
            format!("6 AMD GPU(s); 2 unreadable ({lost}, …)")
        );
    }
}
