//! Answers the WIT interface `inspect`: which scopes are accounts, what their
//! campaigns hold, how much history the policy keeps and where it warns. The host
//! shows these without knowing the layout ([`crate::engine`]'s module docs): one
//! scope per account, its contacts as members grouped by campaign.
//!
//! The rules are plain functions over a [`Catalog`], so that they are tested
//! natively; the component's glue, at the end, reaches the host's imports.

use crate::bindings::inspect::{AccountPage, Campaign, InspectError, Lead, Levels};
use crate::bindings::{GroupSize, Membership, StateError};
use crate::engine::{ACCOUNT_RECORD, HISTORY_CYCLES};
use crate::policy::Policy;

/// What the host's reads answer.
pub type Answer<T> = Result<T, StateError>;

/// [`Catalog::members_after`]'s walk (WIT `catalog.members-after`): the
/// memberships of `scope` (of `group` only, when given) after `after`.
#[derive(Debug, Clone, Copy)]
pub struct Members<'a> {
    pub scope: &'a str,
    pub group: Option<&'a str>,
    pub after: Option<&'a Membership>,
}

/// The host's reads this module needs: the catalog's ordered walks and a record.
pub trait Catalog {
    fn scopes_after(&mut self, after: Option<&str>, limit: u32) -> Answer<Vec<String>>;
    fn members_after(&mut self, list: Members<'_>, limit: u32) -> Answer<Vec<Membership>>;
    fn group_sizes(&mut self, scope: &str) -> Answer<Vec<GroupSize>>;
    fn record_get(&mut self, scope: &str, key: &str) -> Answer<Option<String>>;
}

/// Up to `limit` accounts after `after`: the scopes holding an account record
/// (a scope is an account's, named as the account).
pub fn accounts(
    catalog: &mut impl Catalog,
    after: Option<&str>,
    limit: u32,
) -> Result<AccountPage, InspectError> {
    let limit = limit.max(1);
    let scopes = catalog
        .scopes_after(after, limit)
        .map_err(InspectError::State)?;
    let next = (scopes.len() == limit as usize)
        .then(|| scopes.last().cloned())
        .flatten();
    let mut accounts = Vec::with_capacity(scopes.len());
    for scope in scopes {
        if catalog
            .record_get(&scope, ACCOUNT_RECORD)
            .map_err(InspectError::State)?
            .is_some()
        {
            accounts.push(scope);
        }
    }
    Ok(AccountPage { accounts, next })
}

/// The campaigns of `account`: the groups of its scope, each with its members and
/// those no other group holds (the lead credits deleting the campaign frees: a
/// contact costs one credit while any campaign holds it).
pub fn campaigns(catalog: &mut impl Catalog, account: &str) -> Result<Vec<Campaign>, InspectError> {
    Ok(catalog
        .group_sizes(account)
        .map_err(InspectError::State)?
        .into_iter()
        .map(|g| Campaign {
            name: g.group,
            leads: g.members,
            exclusive: g.exclusive,
        })
        .collect())
}

/// Leads of `account`: the members of its scope, by campaign (group).
pub fn leads(
    catalog: &mut impl Catalog,
    account: &str,
    campaign: Option<&str>,
    after: Option<&Lead>,
    limit: u32,
) -> Result<Vec<Lead>, InspectError> {
    let after = after.map(|l| Membership {
        group: l.campaign.clone(),
        member: l.email.clone(),
    });
    let list = Members {
        scope: account,
        group: campaign,
        after: after.as_ref(),
    };
    Ok(catalog
        .members_after(list, limit)
        .map_err(InspectError::State)?
        .into_iter()
        .map(|m| Lead {
            campaign: m.group,
            email: m.member,
        })
        .collect())
}

/// Billing cycles whose email counts the engine keeps.
pub fn history_cycles() -> u32 {
    HISTORY_CYCLES
}

/// A credit is flagged from the first alert threshold of the policy's `[alerts]`
/// under 100% (the default policy's 80%); never when it sets none.
pub fn warning_levels(policy: Option<&Policy>) -> Result<Levels, InspectError> {
    let policy = policy.ok_or(InspectError::NoPolicy)?;
    let first = |thresholds: &[u8]| thresholds.iter().copied().find(|&t| t < 100);
    Ok(Levels {
        lead_credits: first(&policy.alerts.lead_credits),
        email_credits: first(&policy.alerts.email_credits),
    })
}

#[cfg(target_arch = "wasm32")]
mod component {
    use super::{Answer, Catalog, Members};
    use crate::bindings::creditgate::policy::catalog as imports;
    use crate::bindings::inspect::{AccountPage, Campaign, Guest, InspectError, Lead, Levels};
    use crate::bindings::{GroupSize, Membership};
    use crate::component::{Component, read_record, with_engine};

    struct Host;

    impl Catalog for Host {
        fn scopes_after(&mut self, after: Option<&str>, limit: u32) -> Answer<Vec<String>> {
            imports::scopes_after(after, limit)
        }
        fn members_after(&mut self, list: Members<'_>, limit: u32) -> Answer<Vec<Membership>> {
            imports::members_after(list.scope, list.group, list.after, limit)
        }
        fn group_sizes(&mut self, scope: &str) -> Answer<Vec<GroupSize>> {
            imports::group_sizes(scope)
        }
        fn record_get(&mut self, scope: &str, key: &str) -> Answer<Option<String>> {
            read_record(scope, key)
        }
    }

    impl Guest for Component {
        fn accounts(after: Option<String>, limit: u32) -> Result<AccountPage, InspectError> {
            super::accounts(&mut Host, after.as_deref(), limit)
        }
        fn campaigns(account: String) -> Result<Vec<Campaign>, InspectError> {
            super::campaigns(&mut Host, &account)
        }
        fn leads(
            account: String,
            campaign: Option<String>,
            after: Option<Lead>,
            limit: u32,
        ) -> Result<Vec<Lead>, InspectError> {
            super::leads(
                &mut Host,
                &account,
                campaign.as_deref(),
                after.as_ref(),
                limit,
            )
        }
        fn history_cycles() -> u32 {
            super::history_cycles()
        }
        fn warning_levels() -> Result<Levels, InspectError> {
            with_engine(|e| super::warning_levels(e.policy()))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Scopes with records and memberships, as a store would answer the walks.
    #[derive(Default)]
    struct Fake {
        records: BTreeMap<(String, String), String>,
        members: BTreeMap<String, Vec<(String, String)>>,
    }

    impl Catalog for Fake {
        fn scopes_after(&mut self, after: Option<&str>, limit: u32) -> Answer<Vec<String>> {
            let mut scopes: Vec<String> = self
                .records
                .keys()
                .map(|(s, _)| s.clone())
                .chain(self.members.keys().cloned())
                .filter(|s| after.is_none_or(|a| s.as_str() > a))
                .collect();
            scopes.sort();
            scopes.dedup();
            scopes.truncate(limit as usize);
            Ok(scopes)
        }
        fn members_after(&mut self, list: Members<'_>, limit: u32) -> Answer<Vec<Membership>> {
            let Members {
                scope,
                group,
                after,
            } = list;
            let mut all = self.members.get(scope).cloned().unwrap_or_default();
            all.sort();
            Ok(all
                .into_iter()
                .filter(|(g, _)| group.is_none_or(|w| w == g))
                .filter(|(g, m)| after.is_none_or(|a| (g, m) > (&a.group, &a.member)))
                .take(limit as usize)
                .map(|(group, member)| Membership { group, member })
                .collect())
        }
        fn group_sizes(&mut self, scope: &str) -> Answer<Vec<GroupSize>> {
            let all = self.members.get(scope).cloned().unwrap_or_default();
            let mut groups_of = BTreeMap::<&str, u64>::new();
            for (_, m) in &all {
                *groups_of.entry(m).or_default() += 1;
            }
            let mut sizes = BTreeMap::<String, (u64, u64)>::new();
            for (g, m) in &all {
                let (n, e) = sizes.entry(g.clone()).or_default();
                *n += 1;
                *e += u64::from(groups_of[m.as_str()] == 1);
            }
            Ok(sizes
                .into_iter()
                .map(|(group, (members, exclusive))| GroupSize {
                    group,
                    members,
                    exclusive,
                })
                .collect())
        }
        fn record_get(&mut self, scope: &str, key: &str) -> Answer<Option<String>> {
            Ok(self.records.get(&(scope.into(), key.into())).cloned())
        }
    }

    fn fake() -> Fake {
        let mut f = Fake::default();
        for a in ["acme", "beta", "zeta"] {
            f.records
                .insert((a.into(), ACCOUNT_RECORD.into()), "0 pro".into());
        }
        // A scope without an account record: not an account.
        f.members
            .insert("orphan".into(), vec![("q1".into(), "x@y.z".into())]);
        f.members.insert(
            "acme".into(),
            vec![
                ("q2".into(), "b@x.io".into()),
                ("q1".into(), "a@x.io".into()),
                ("q1".into(), "b@x.io".into()),
            ],
        );
        f
    }

    #[test]
    fn accounts_are_the_scopes_with_an_account_record_paged_by_scope() {
        let mut f = fake();
        let first = accounts(&mut f, None, 2).unwrap();
        assert_eq!(first.accounts, ["acme", "beta"]);
        assert_eq!(first.next.as_deref(), Some("beta"));
        let second = accounts(&mut f, first.next.as_deref(), 2).unwrap();
        assert_eq!(second.accounts, ["zeta"], "orphan is skipped");
        assert_eq!(second.next.as_deref(), Some("zeta"));
        let last = accounts(&mut f, Some("zeta"), 2).unwrap();
        assert!(last.accounts.is_empty() && last.next.is_none());
    }

    #[test]
    fn campaigns_count_memberships_and_leads_page_in_order() {
        let mut f = fake();
        let c = campaigns(&mut f, "acme").unwrap();
        // b@x.io is in both campaigns: only a@x.io is q1's alone.
        assert_eq!(
            c.iter()
                .map(|c| (c.name.as_str(), c.leads, c.exclusive))
                .collect::<Vec<_>>(),
            [("q1", 2, 1), ("q2", 1, 0)]
        );
        assert!(campaigns(&mut f, "nobody").unwrap().is_empty());
        let page = leads(&mut f, "acme", None, None, 2).unwrap();
        assert_eq!(page.len(), 2);
        let rest = leads(&mut f, "acme", None, page.last(), 2).unwrap();
        assert_eq!(
            rest.iter()
                .map(|l| (l.campaign.as_str(), l.email.as_str()))
                .collect::<Vec<_>>(),
            [("q2", "b@x.io")]
        );
        let q2 = leads(&mut f, "acme", Some("q2"), None, 10).unwrap();
        assert_eq!(q2.len(), 1);
    }

    #[test]
    fn warning_levels_are_the_first_threshold_under_100() {
        assert!(matches!(warning_levels(None), Err(InspectError::NoPolicy)));
        let levels = |p: &Policy| {
            let l = warning_levels(Some(p)).expect("a policy is loaded");
            (l.lead_credits, l.email_credits)
        };
        let (mut policy, _) = Policy::parse("[plans.pro]\nlead_credits = 10\nemail_credits = 10\n")
            .expect("a valid policy");
        assert_eq!(levels(&policy), (Some(80), Some(80)));
        policy.alerts.lead_credits = vec![100];
        policy.alerts.email_credits = vec![50, 90, 100];
        assert_eq!(levels(&policy), (None, Some(50)));
    }
}
