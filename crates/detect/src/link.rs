//! NIC link state over time: a flap from a dead link, per port, for the node agent.
//!
//! Each tracked port (a NIC of this node, by PCI address) follows its link changes, from the
//! kernel log (`mlx5_core 0000:08:00.0 ens1np0: Link down`) and from the state sysfs reads now:
//! - a link that comes back within `down_after` is a **flap**: counted, no fault;
//! - a link down for `down_after` or longer is a **fault** from the moment it went down;
//! - more than `max_flaps` flaps within `flap_window` is a fault too (a flapping link);
//! - a faulted link that is up and has not changed for `stable_after` is **clear** again.
//!
//! Only a port seen up (in this boot) can be at fault: a port that was never up is not in use
//! (no cable, not configured), and its being down says nothing about the node's network.
//!
//! **One clock.** Every duration (how long a link was down, how long it has been stable, the
//! flap window) is measured on the tracker's own clock: the `now` its caller passes to
//! [`LinkTracker::tick`], [`LinkTracker::set_ports`] and [`LinkTracker::change_logged`] (the
//! agent's wall clock when the event reaches it), which never runs backwards (an earlier `now`
//! counts as the latest one seen). The time a kernel line was logged is used for one thing
//! only: telling a line of this boot replayed at start from a live one (it is older than the
//! state sysfs read). A kernel clock that runs ahead of or behind the agent's can no longer
//! make a dead link a flap or a flap a fault.
//!
//! Pure and I/O-free: time is an argument; the number of ports is bounded ([`MAX_PORTS`]) and
//! so is each port's flap history.

use std::collections::{BTreeMap, VecDeque};

use devheal_core::{Duration, NetworkFault, Time};

/// At most this many ports are tracked (a node has a handful of NICs; more is a bad sysfs).
pub const MAX_PORTS: usize = 64;

/// When a link change is a flap and when it is a fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkConfig {
    /// A link down for this long is a fault; one back up sooner was a flap.
    pub down_after: Duration,
    /// Flaps are counted within this window.
    pub flap_window: Duration,
    /// More flaps than this within `flap_window` is a fault.
    pub max_flaps: u32,
    /// A faulted link up and unchanged for this long is clear.
    pub stable_after: Duration,
}

impl Default for LinkConfig {
    /// 30 s, 10 min, 1 flap, 10 min (the reasons are in `docs/agent.md`, "NIC links").
    fn default() -> Self {
        LinkConfig {
            down_after: Duration::from_secs(30),
            flap_window: Duration::from_mins(10),
            max_flaps: 1,
            stable_after: Duration::from_mins(10),
        }
    }
}

/// A [`LinkConfig`] that cannot work, naming the setting.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LinkConfigError {
    #[error("the NIC link down-after time must be at least 1 s (got {0:.3} s)")]
    DownAfter(f64),
    #[error("the NIC flap window ({window:.0} s) must be at least the down-after time ({down_after:.0} s)")]
    FlapWindow { window: f64, down_after: f64 },
    #[error("the NIC stable-after time must be at least 1 s (got {0:.3} s)")]
    StableAfter(f64),
}

impl LinkConfig {
    /// Refuse settings that cannot work: a zero down-after would make every down a fault at
    /// once, a flap window shorter than it would forget a flap before it could be one.
    pub fn validate(&self) -> Result<(), LinkConfigError> {
        let second = Duration::from_secs(1);
        if self.down_after < second {
            return Err(LinkConfigError::DownAfter(self.down_after.as_secs_f64()));
        }
        if self.flap_window < self.down_after {
            return Err(LinkConfigError::FlapWindow {
                window: self.flap_window.as_secs_f64(),
                down_after: self.down_after.as_secs_f64(),
            });
        }
        if self.stable_after < second {
            return Err(LinkConfigError::StableAfter(self.stable_after.as_secs_f64()));
        }
        Ok(())
    }
}

/// Whether a link is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LinkState {
    Up,
    Down,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Up => "up",
            LinkState::Down => "down",
        }
    }
}

/// One port's fault: since when, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkFault {
    pub since: Time,
    pub reason: String,
}

/// One port as the tracker has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortLink {
    /// `interface (PCI address)` or the PCI address alone: how reasons name the port.
    pub label: String,
    /// `None` until the port's state is first known.
    pub state: Option<LinkState>,
    /// When the state last changed.
    pub changed_at: Time,
    /// The port was up at some time in this boot (a port never up is not in use).
    pub seen_up: bool,
    /// The state is the first one known and no change has followed: lines older than it (the
    /// boot's log replayed at start) may still say since when it holds and that it was up.
    first_known: bool,
    /// When the state was last learned (a change, or the read at start): a line older than
    /// this is stale. `changed_at` may lie before it (a link down since before the start).
    known_at: Time,
    /// Flaps within the flap window (bounded to `max_flaps + 1`).
    flaps: VecDeque<Time>,
    /// Flaps since the agent started.
    pub flaps_total: u64,
    pub fault: Option<LinkFault>,
}

impl PortLink {
    /// Flaps within the flap window, as of the last change or tick.
    pub fn recent_flaps(&self) -> usize {
        self.flaps.len()
    }
}

/// What one observed change did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkChange {
    /// Not a port of this node.
    NotTracked,
    /// The state it already had.
    Unchanged,
    /// The link went down.
    Down,
    /// The link came back; `flap`: within `down_after` of going down.
    Up { flap: bool },
}

/// A port's fault began or ended (from [`LinkTracker::tick`] and [`LinkTracker::change`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultChange {
    Raised { port: String, reason: String },
    Cleared { port: String },
}

/// The link state of a node's NIC ports.
#[derive(Clone, Debug, Default)]
pub struct LinkTracker {
    config: LinkConfig,
    /// By PCI address.
    ports: BTreeMap<String, PortLink>,
    /// The latest `now` seen: the tracker's clock.
    clock: Time,
}

impl LinkTracker {
    pub fn new(config: LinkConfig) -> Self {
        LinkTracker { config, ports: BTreeMap::new(), clock: Time::ZERO }
    }

    /// The tracker's clock at `now`: `now`, or the latest time already seen if `now` is earlier.
    fn advance(&mut self, now: Time) -> Time {
        self.clock = self.clock.max(now);
        self.clock
    }

    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// The node's ports now (`(PCI address, label)`), from its NIC inventory: new ones are
    /// tracked, gone ones forgotten, at most [`MAX_PORTS`] (the first by address).
    pub fn set_ports(&mut self, ports: impl IntoIterator<Item = (String, String)>, now: Time) {
        let mut wanted: BTreeMap<String, String> = BTreeMap::new();
        for (pci, label) in ports {
            wanted.insert(pci, label);
        }
        while wanted.len() > MAX_PORTS {
            wanted.pop_last();
        }
        self.ports.retain(|pci, _| wanted.contains_key(pci));
        for (pci, label) in wanted {
            let port = self.ports.entry(pci).or_insert_with(|| PortLink {
                label: label.clone(),
                state: None,
                changed_at: now,
                seen_up: false,
                first_known: false,
                known_at: now,
                flaps: VecDeque::new(),
                flaps_total: 0,
                fault: None,
            });
            port.label = label;
        }
    }

    pub fn is_tracked(&self, pci: &str) -> bool {
        self.ports.contains_key(pci)
    }

    pub fn ports(&self) -> impl Iterator<Item = (&str, &PortLink)> {
        self.ports.iter().map(|(pci, port)| (pci.as_str(), port))
    }

    /// The port's link is `state` now (sysfs read it now): [`Self::change_logged`] with the
    /// log's time and the tracker's the same.
    pub fn change(&mut self, pci: &str, state: LinkState, now: Time) -> (LinkChange, Option<FaultChange>) {
        self.change_logged(pci, state, now, now)
    }

    /// The port's link became `state`: a kernel line logged at `logged_at` that reaches the
    /// tracker at `now` (its clock). A change logged before the state the port is known to have
    /// (a line of this boot replayed at start, after sysfs said how the link is now) is stale
    /// and changes nothing; a live one counts from `now`.
    pub fn change_logged(
        &mut self,
        pci: &str,
        state: LinkState,
        logged_at: Time,
        now: Time,
    ) -> (LinkChange, Option<FaultChange>) {
        let config = self.config.clone();
        let at = self.advance(now);
        let Some(port) = self.ports.get_mut(pci) else { return (LinkChange::NotTracked, None) };
        if port.state.is_some() && logged_at < port.known_at {
            // Older than the state known now: it changes nothing, except that a port whose
            // state is only the one read at start learns from the boot's log that it was up,
            // and since when a link that is down now has been down (an agent restarted while a
            // link is dead finds the fault again, from when it began).
            if port.first_known {
                match state {
                    LinkState::Up => port.seen_up = true,
                    LinkState::Down if port.state == Some(LinkState::Down) => port.changed_at = logged_at,
                    LinkState::Down => {}
                }
            }
            return (LinkChange::Unchanged, None);
        }
        if port.state == Some(state) {
            return (LinkChange::Unchanged, None);
        }
        // The first state a port learns (no sysfs state yet) is taken at its own time, if it
        // is not in the future: a line of the boot's log says since when.
        let at = if port.state.is_none() { logged_at.min(at) } else { at };
        let previous = port.state.replace(state);
        port.first_known = previous.is_none();
        // Which lines are older than this state is told on the log's own clock.
        port.known_at = logged_at;
        if previous.is_none() {
            port.changed_at = at;
        }
        let lasted = at.since(port.changed_at);
        port.changed_at = at;
        match (previous, state) {
            (_, LinkState::Down) => (LinkChange::Down, None),
            (None, LinkState::Up) => {
                port.seen_up = true;
                (LinkChange::Up { flap: false }, None)
            }
            (Some(_), LinkState::Up) => {
                port.seen_up = true;
                if lasted >= config.down_after {
                    // Down for longer than a flap: a fault (raised here if no tick saw it yet),
                    // cleared only once the link has been stable.
                    let raised = raise(port, pci, at - lasted, |label| {
                        format!("link down on {label} for {:.0}s", lasted.as_secs_f64())
                    });
                    return (LinkChange::Up { flap: false }, raised);
                }
                port.flaps_total += 1;
                port.flaps.push_back(at);
                forget_old_flaps(port, at, &config);
                let raised = if port.flaps.len() > config.max_flaps as usize {
                    let count = port.flaps.len();
                    let window = config.flap_window.as_secs_f64() / 60.0;
                    raise(port, pci, at, |label| {
                        format!("link flapping on {label}: {count} flaps within {window:.0} min")
                    })
                } else {
                    None
                };
                (LinkChange::Up { flap: true }, raised)
            }
        }
    }

    /// Time passes: links down for `down_after` become faults; faulted links up and stable for
    /// `stable_after` are clear.
    pub fn tick(&mut self, now: Time) -> Vec<FaultChange> {
        let now = self.advance(now);
        let config = self.config.clone();
        let mut changes = Vec::new();
        for (pci, port) in self.ports.iter_mut() {
            forget_old_flaps(port, now, &config);
            let lasted = now.since(port.changed_at);
            match (port.state, &port.fault) {
                (Some(LinkState::Down), None) if port.seen_up && lasted >= config.down_after => {
                    let since = port.changed_at;
                    changes.extend(raise(port, pci, since, |label| format!("link down on {label}")));
                }
                (Some(LinkState::Up), Some(_))
                    if lasted >= config.stable_after && port.flaps.len() <= config.max_flaps as usize =>
                {
                    port.fault = None;
                    changes.push(FaultChange::Cleared { port: pci.clone() });
                }
                _ => {}
            }
        }
        changes
    }

    /// The node's network fault now: every port at fault, the earliest since, one reason.
    pub fn fault(&self) -> Option<NetworkFault> {
        let faulted: Vec<&PortLink> = self.ports.values().filter(|p| p.fault.is_some()).collect();
        let since = faulted.iter().filter_map(|p| p.fault.as_ref().map(|f| f.since)).min()?;
        let mut links: Vec<String> = faulted.iter().map(|p| p.label.clone()).collect();
        links.sort();
        let reason = faulted
            .iter()
            .filter_map(|p| p.fault.as_ref().map(|f| f.reason.as_str()))
            .collect::<Vec<_>>()
            .join("; ");
        Some(NetworkFault { links, since, reason })
    }
}

fn forget_old_flaps(port: &mut PortLink, now: Time, config: &LinkConfig) {
    while port.flaps.front().is_some_and(|t| now.since(*t) > config.flap_window) {
        port.flaps.pop_front();
    }
    while port.flaps.len() > config.max_flaps as usize + 1 {
        port.flaps.pop_front();
    }
}

/// Mark the port at fault from `since` (unless it already is).
fn raise(
    port: &mut PortLink,
    pci: &str,
    since: Time,
    reason: impl FnOnce(&str) -> String,
) -> Option<FaultChange> {
    if port.fault.is_some() {
        return None;
    }
    let reason = reason(&port.label);
    port.fault = Some(LinkFault { since, reason: reason.clone() });
    Some(FaultChange::Raised { port: pci.to_string(), reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NIC: &str = "0000:08:00.0";

    fn t(s: i64) -> Time {
        Time::from_secs(s)
    }

    fn tracker() -> LinkTracker {
        let mut links = LinkTracker::new(LinkConfig::default());
        links.set_ports([(NIC.to_string(), "ens1np0 (0000:08:00.0)".to_string())], t(0));
        links.change(NIC, LinkState::Up, t(0));
        links
    }

    /// The kernel's clock runs 20 s ahead of the agent's: a link down for 31 s by the
    /// tracker's clock is a fault, though its line says it went down only 11 s before the
    /// tick. Measured on the line's time (two clocks), it would still be taken for a flap.
    #[test]
    fn a_kernel_clock_ahead_of_the_agents_does_not_hide_a_dead_link() {
        let mut links = LinkTracker::new(LinkConfig::default());
        links.set_ports([(NIC.to_string(), "ens1np0".to_string())], t(0));
        links.change(NIC, LinkState::Up, t(0));
        // Logged at 120 by the kernel's clock, it reaches the agent at 100.
        links.change_logged(NIC, LinkState::Down, t(120), t(100));
        assert_eq!(links.tick(t(131)).len(), 1, "down for 31 s by the tracker's clock: a fault");
        let (change, _) = links.change_logged(NIC, LinkState::Up, t(135), t(140));
        assert_eq!(change, LinkChange::Up { flap: false });
        let port = links.ports().next().expect("the port").1;
        assert_eq!((port.flaps_total, port.fault.as_ref().map(|f| f.since)), (0, Some(t(100))));
        // Stable from the up's arrival (140), on the same clock.
        assert!(links.tick(t(140 + 599)).is_empty(), "not yet stable for 10 min");
        assert_eq!(links.tick(t(140 + 600)).len(), 1, "cleared");
    }

    #[test]
    fn a_down_a_tick_judged_a_fault_does_not_end_in_a_flap_whatever_the_ups_time() {
        let mut links = LinkTracker::new(LinkConfig::default());
        links.set_ports([(NIC.to_string(), "ens1np0".to_string())], t(0));
        links.change(NIC, LinkState::Up, t(0));
        links.change(NIC, LinkState::Down, t(100));
        assert_eq!(links.tick(t(131)).len(), 1, "down for 31 s by the tick's clock: a fault");
        // The up's time comes from another clock (a kernel line's) that runs behind the tick's.
        let (change, _) = links.change(NIC, LinkState::Up, t(120));
        assert_eq!(change, LinkChange::Up { flap: false });
        let port = links.ports().next().expect("the port").1;
        assert_eq!((port.flaps_total, port.recent_flaps()), (0, 0));
    }

    #[test]
    fn a_link_back_within_the_window_is_a_counted_flap_and_no_fault() {
        let mut links = tracker();
        assert_eq!(links.change(NIC, LinkState::Down, t(100)), (LinkChange::Down, None));
        assert!(links.tick(t(110)).is_empty());
        assert_eq!(links.change(NIC, LinkState::Up, t(112)), (LinkChange::Up { flap: true }, None));
        assert!(links.tick(t(200)).is_empty());
        assert_eq!(links.fault(), None);
        let (_, port) = links.ports().next().unwrap();
        assert_eq!((port.flaps_total, port.recent_flaps()), (1, 1));
    }

    #[test]
    fn a_link_that_stays_down_is_a_fault_from_when_it_went_down_and_clears_once_stable() {
        let mut links = tracker();
        links.change(NIC, LinkState::Down, t(100));
        assert!(links.tick(t(129)).is_empty(), "not yet: 29 s");
        let raised = links.tick(t(130));
        assert!(matches!(&raised[..], [FaultChange::Raised { port, .. }] if port == NIC), "{raised:?}");
        let fault = links.fault().expect("a fault");
        assert_eq!(fault.since, t(100));
        assert_eq!(fault.links, ["ens1np0 (0000:08:00.0)"]);
        assert!(links.tick(t(140)).is_empty(), "raised once");
        // Up again: not a flap (it was down too long), and not clear until stable.
        assert_eq!(links.change(NIC, LinkState::Up, t(300)), (LinkChange::Up { flap: false }, None));
        assert!(links.tick(t(300 + 599)).is_empty());
        assert!(links.fault().is_some());
        assert_eq!(links.tick(t(900)), [FaultChange::Cleared { port: NIC.into() }]);
        assert_eq!(links.fault(), None);
    }

    #[test]
    fn a_long_down_seen_only_by_its_up_line_is_still_a_fault() {
        let mut links = tracker();
        links.change(NIC, LinkState::Down, t(100));
        let (change, raised) = links.change(NIC, LinkState::Up, t(200));
        assert_eq!(change, LinkChange::Up { flap: false });
        assert!(raised.is_some());
        assert_eq!(links.fault().map(|f| f.since), Some(t(100)));
    }

    #[test]
    fn more_than_max_flaps_within_the_window_is_a_fault() {
        let mut links = tracker();
        links.change(NIC, LinkState::Down, t(100));
        assert_eq!(links.change(NIC, LinkState::Up, t(105)).1, None, "one flap is tolerated");
        links.change(NIC, LinkState::Down, t(200));
        let (change, raised) = links.change(NIC, LinkState::Up, t(203));
        assert_eq!(change, LinkChange::Up { flap: true });
        assert!(matches!(raised, Some(FaultChange::Raised { ref reason, .. }) if reason.contains("2 flaps")));
        assert_eq!(links.fault().map(|f| f.since), Some(t(203)));
        // Still flapping within the window: not clear, however long the last up lasts... until
        // the flaps leave the window and the link has been stable.
        assert!(links.tick(t(203 + 599)).is_empty());
        assert_eq!(links.tick(t(203 + 600)).len(), 1);
    }

    #[test]
    fn flaps_far_apart_are_never_a_fault() {
        let mut links = tracker();
        for i in 0..20 {
            let at = 1000 * (i + 1);
            links.change(NIC, LinkState::Down, t(at));
            links.change(NIC, LinkState::Up, t(at + 3));
            assert!(links.tick(t(at + 10)).is_empty());
        }
        assert_eq!(links.fault(), None);
        assert_eq!(links.ports().next().unwrap().1.flaps_total, 20);
    }

    #[test]
    fn a_port_never_up_is_not_in_use_and_an_unknown_port_is_not_tracked() {
        let mut links = LinkTracker::new(LinkConfig::default());
        links.set_ports([(NIC.to_string(), NIC.to_string())], t(0));
        links.change(NIC, LinkState::Down, t(0));
        assert!(links.tick(t(3600)).is_empty());
        assert_eq!(links.change("0000:09:00.0", LinkState::Down, t(1)).0, LinkChange::NotTracked);
    }

    #[test]
    fn an_agent_restarted_while_a_link_is_dead_finds_the_fault_from_when_it_began() {
        let mut links = LinkTracker::new(LinkConfig::default());
        links.set_ports([(NIC.to_string(), NIC.to_string())], t(1000));
        // sysfs at start: down. Then the boot's log, replayed: up at 5, down at 100, up at 150,
        // down at 200.
        links.change(NIC, LinkState::Down, t(1000));
        for (state, at) in
            [(LinkState::Up, 5), (LinkState::Down, 100), (LinkState::Up, 150), (LinkState::Down, 200)]
        {
            assert_eq!(links.change(NIC, state, t(at)).0, LinkChange::Unchanged);
        }
        assert_eq!(links.tick(t(1001)).len(), 1);
        assert_eq!(links.fault().map(|f| f.since), Some(t(200)));
        // Once a live change followed, old lines teach nothing.
        links.change(NIC, LinkState::Up, t(1100));
        links.change(NIC, LinkState::Down, t(1200));
        links.change(NIC, LinkState::Down, t(300));
        assert_eq!(links.ports().next().unwrap().1.changed_at, t(1200));
    }

    #[test]
    fn settings_that_cannot_work_are_refused_naming_the_setting() {
        assert_eq!(LinkConfig::default().validate(), Ok(()));
        let zero = LinkConfig { down_after: Duration::ZERO, ..LinkConfig::default() };
        assert!(zero.validate().unwrap_err().to_string().contains("down-after"));
        let short = LinkConfig { flap_window: Duration::from_secs(5), ..LinkConfig::default() };
        assert!(short.validate().unwrap_err().to_string().contains("flap window"));
        let stable = LinkConfig { stable_after: Duration::ZERO, ..LinkConfig::default() };
        assert!(stable.validate().unwrap_err().to_string().contains("stable-after"));
    }

    #[test]
    fn ports_are_bounded_and_follow_the_inventory() {
        let mut links = LinkTracker::new(LinkConfig::default());
        links.set_ports((0..200).map(|i| (format!("0000:{i:02x}:00.0"), String::new())), t(0));
        assert_eq!(links.ports().count(), MAX_PORTS);
        links.set_ports([(NIC.to_string(), String::new())], t(1));
        assert_eq!(links.ports().map(|(p, _)| p).collect::<Vec<_>>(), [NIC]);
    }

    #[test]
    fn a_replayed_line_older_than_the_known_state_is_stale() {
        let mut links = tracker();
        // sysfs says up at 100; the boot's replayed lines (down at 10, up at 12) change nothing.
        links.change(NIC, LinkState::Down, t(100));
        links.change(NIC, LinkState::Up, t(101));
        assert_eq!(links.change(NIC, LinkState::Down, t(10)).0, LinkChange::Unchanged);
        assert_eq!(links.change(NIC, LinkState::Up, t(12)).0, LinkChange::Unchanged);
        assert_eq!(links.ports().next().unwrap().1.flaps_total, 1, "only the live flap");
        // A port whose state is not known yet takes the first line at its own time.
        let mut fresh = LinkTracker::new(LinkConfig::default());
        fresh.set_ports([(NIC.to_string(), NIC.to_string())], t(500));
        fresh.change(NIC, LinkState::Up, t(5));
        fresh.change(NIC, LinkState::Down, t(400));
        assert_eq!(fresh.tick(t(500)).len(), 1, "down since 400, seen at 500");
        assert_eq!(fresh.fault().map(|f| f.since), Some(t(400)));
    }
}
