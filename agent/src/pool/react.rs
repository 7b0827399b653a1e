//! How the pool answers a failed growth call, by what the cloud's error code means
//! ([`berth_cloud::codes`]): the three growth limits of the real API are told apart, since each
//! needs its own answer.

use berth_cloud::codes::Class;

use super::PoolAction;

/// What the pool does after a call of its plan failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reaction {
    /// The vSwitch has no address left: no growth in it (the pool's only vSwitch) for the inhibit
    /// window; calling again now would only be refused again.
    InhibitGrowth,
    /// This ENI holds as many addresses as the cloud lets it: it takes no more, and the next plan
    /// grows on another ENI (or a new one). Not inhibited.
    EniFull { eni: String },
    /// The instance holds as many ENIs as it may: no new ENI for the inhibit window (the ENIs it
    /// has still fill up).
    NoNewEnis,
    /// The API is over its rate even after the client's own retries: wait longer, then try again.
    BackOff,
    /// Anything else: try again at the next round.
    Retry,
}

/// The reaction to `class` (the failed call's error class; `None` when the cloud answered
/// nothing, e.g. unreachable) for `action`.
pub fn react(action: &PoolAction, class: Option<Class>) -> Reaction {
    match (class, action) {
        (Some(Class::VSwitchExhausted), _) => Reaction::InhibitGrowth,
        (Some(Class::EniAddressesFull), PoolAction::AssignIps { eni, .. }) => Reaction::EniFull { eni: eni.clone() },
        // A new ENI cannot hold that many: the type's limit is lower than the catalogue says;
        // there is nothing to fill, so the pool must not retry at once.
        (Some(Class::EniAddressesFull), _) => Reaction::InhibitGrowth,
        (Some(Class::InstanceEniLimit), _) => Reaction::NoNewEnis,
        (Some(Class::Throttled), _) => Reaction::BackOff,
        _ => Reaction::Retry,
    }
}

#[cfg(test)]
mod tests {
    use berth_cloud::codes::{class_of, code};

    use super::*;

    fn assign() -> PoolAction {
        PoolAction::AssignIps { eni: "eni-1".into(), count: 4 }
    }

    /// Each documented code the pool meets, as the real ECS API answers it, and what the pool does.
    #[test]
    fn each_documented_code_gets_the_reaction_of_the_real_cloud() {
        let create = PoolAction::CreateEni { secondary_ips: 4 };
        let cases: &[(&str, &PoolAction, Reaction)] = &[
            // AssignPrivateIpAddresses / CreateNetworkInterface: the vSwitch is out of addresses.
            (code::VSWITCH_IP_NOT_ENOUGH, &assign(), Reaction::InhibitGrowth),
            (code::VSWITCH_IP_NOT_ENOUGH, &create, Reaction::InhibitGrowth),
            // The real meaning of QuotaExceeded.PrivateIpAddress is the vSwitch's, never the ENI's.
            (code::VSWITCH_PRIVATE_IP_QUOTA, &assign(), Reaction::InhibitGrowth),
            // The ENI is full: the next ENI, not a pause.
            (code::ENI_IPV4_FULL, &assign(), Reaction::EniFull { eni: "eni-1".into() }),
            (code::ENI_IPV6_FULL, &assign(), Reaction::EniFull { eni: "eni-1".into() }),
            (code::ENI_PER_INSTANCE_LIMIT, &create, Reaction::NoNewEnis),
            (code::THROTTLING, &assign(), Reaction::BackOff),
            (code::THROTTLING_USER, &create, Reaction::BackOff),
            (code::INTERNAL_ERROR, &assign(), Reaction::Retry),
        ];
        for (c, action, want) in cases {
            assert_eq!(&react(action, Some(class_of(c))), want, "{c} on {action:?}");
        }
        assert_eq!(react(&assign(), None), Reaction::Retry);
    }
}
