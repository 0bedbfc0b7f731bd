//! How shared a linking artifact is: the number of distinct hosts its passive DNS names (see
//! [`super::confidence`]). The walk counts it for every host whose passive DNS it reads anyway;
//! for an attributed counterpart it did not read, one page is asked (at most once per
//! [`super::ChainSettings::reputation_ttl`], through the `host_fanout` cache), within the walk's
//! request budget. Walks running at once often link through the same counterpart; the first
//! to measure it leads, the others follow (see [`crate::in_flight`]), so that it is asked once.

use foldhash::{HashMap, HashSet};
use futures::StreamExt;

use super::{ActorHit, ChainError, Chainer, Fanout, Walk};
use crate::graph::model::PassiveDnsArtifact;
use crate::graph::PageLimits;
use crate::in_flight;
use crate::progress::point;

/// At most this many distinct names are counted per host: enough to tell dedicated, shared and
/// widely shared apart (see [`super::confidence::SHARED_MAX`]), and one page's worth.
pub(super) const COUNTED: usize = 1000;

/// The distinct hosts one passive DNS listing names, counted up to [`COUNTED`].
#[derive(Debug, Default)]
pub(super) struct Counter {
    names: HashSet<String>,
    more: bool,
}

impl Counter {
    pub(super) fn insert(&mut self, name: &str) {
        if self.names.len() < COUNTED {
            self.names.insert(name.to_owned());
        } else if !self.names.contains(name) {
            self.more = true;
        }
    }

    /// What was counted; `cut` when the listing was not read to its end.
    pub(super) fn fanout(&self, cut: bool) -> Fanout {
        Fanout {
            names: self.names.len() as u32,
            more: self.more || cut,
        }
    }
}

/// A host whose fanout this walk measures itself, with the lead of its measure when shared.
type Measuring = in_flight::Own<Fanout>;

impl Chainer {
    /// Measure the fanout of every counterpart that links an actor and whose fanout the walk
    /// does not know: from a measure another walk has in flight, from the cache, else one page
    /// of its passive DNS each. Like reputations (see [`super::lookup`]), this walk's own
    /// measures are saved before it waits for anyone else's, and what others give up on, it
    /// measures itself.
    pub(super) async fn measure_sharing(
        &self,
        walk: &mut Walk,
        hits: &[ActorHit],
    ) -> Result<(), ChainError> {
        if !self.settings.measure_sharing {
            return Ok(());
        }
        let mut wanted: Vec<String> = hits
            .iter()
            .filter(|hit| hit.path.len() > 1 && !walk.fanout.contains_key(&hit.artifact))
            .map(|hit| hit.artifact.clone())
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        if wanted.is_empty() {
            return Ok(());
        }
        let in_flight = self.in_flight.as_ref().map(|f| &f.fanouts);
        let (leads, follows) = in_flight::split(in_flight, wanted);
        self.measure(walk, leads).await?;
        let (answered, released) = in_flight::follow(follows, point::OTHER_WALK).await;
        walk.fanout.extend(answered);
        self.measure(walk, released).await
    }

    /// The fanouts of `hosts` from the cache, else from Graph; what Graph answered is saved
    /// before the leads are dropped, so that a walk coming later finds it in the cache.
    async fn measure(&self, walk: &mut Walk, hosts: Vec<Measuring>) -> Result<(), ChainError> {
        if hosts.is_empty() {
            return Ok(());
        }
        let mut wanted: Vec<String> = hosts.iter().map(|(host, _)| host.clone()).collect();
        if let Some(cache) = &self.cache {
            match cache
                .cached_fanouts(&wanted, self.settings.reputation_ttl)
                .await
            {
                Ok(cached) => {
                    wanted.retain(|host| !cached.contains_key(host));
                    // Followers of a cached host need not wait for the others' pages.
                    answer(&hosts, &cached);
                    walk.fanout.extend(cached);
                }
                Err(error) => tracing::warn!(%error, "fanout cache unreadable; asking Graph"),
            }
        }
        let measured = self.first_pages(walk, wanted).await?;
        answer(&hosts, &measured);
        if let Some(cache) = &self.cache {
            if let Err(error) = cache.save_fanouts(&measured).await {
                tracing::warn!(%error, "could not cache {} fanout(s)", measured.len());
            }
        }
        walk.fanout.extend(measured);
        Ok(())
    }

    /// One page of the passive DNS of each host, as far as the budget goes: hosts it leaves
    /// out stay unmeasured (noted in the report's truncation).
    async fn first_pages(
        &self,
        walk: &mut Walk,
        hosts: Vec<String>,
    ) -> Result<HashMap<String, Fanout>, ChainError> {
        let budget = self.settings.request_budget;
        let left = budget.saturating_sub(walk.graph.requests()) as usize;
        let skipped = hosts.len().saturating_sub(left);
        let graph = walk.graph.clone();
        let limits = PageLimits {
            page_size: Some(COUNTED as u32),
            max_pages: Some(1),
        };
        let pages = futures::stream::iter(hosts.into_iter().take(left))
            .map(|host| {
                let (graph, names) = (graph.clone(), self.names.clone());
                async move {
                    let mut counter = Counter::default();
                    let paged = graph
                        .passive_dns_pages(&host, limits, |page: Vec<PassiveDnsArtifact>| {
                            for record in &page {
                                let artifact = record.artifact.as_ref();
                                if let Some(name) = super::counterpart(artifact, &names) {
                                    counter.insert(&name);
                                }
                            }
                        })
                        .await?;
                    Ok::<_, ChainError>((host, counter.fanout(paged.truncated)))
                }
            })
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect::<Vec<_>>()
            .await;
        walk.pages += pages.len() as u32;
        walk.sharing_pages += pages.len() as u32;
        if skipped > 0 {
            walk.truncated.push(format!(
                "request budget ({budget}) left {skipped} attributed counterpart(s) unmeasured for sharing"
            ));
        }
        pages.into_iter().collect()
    }
}

/// Give the followers of each of `hosts` that `fanouts` holds their answer.
fn answer(hosts: &[Measuring], fanouts: &HashMap<String, Fanout>) {
    for (host, lead) in hosts {
        if let (Some(lead), Some(fanout)) = (lead, fanouts.get(host)) {
            lead.answer(*fanout);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{json, Value};

    use super::*;
    use crate::chain::{ChainSettings, InFlightLookups};
    use crate::graph::{GraphClient, GraphSettings};
    use crate::observable::{normalise, Normalised};
    use crate::secret::Secret;
    use crate::sim::{self, SimConfig};

    const IOC: &str = "ioc.lead-gives-up-test.com";
    const COUNTERPART: &str = "52.9.0.1";

    fn record(parent: &str, artifact: &str, odata: &str) -> Value {
        let when = "2024-01-01T00:00:00Z";
        json!({
            "id": format!("{parent}-{artifact}"), "collectedDateTime": when,
            "firstSeenDateTime": when, "lastSeenDateTime": when, "recordType": "A",
            "parentHost": {"id": parent},
            "artifact": {"@odata.type": format!("#microsoft.graph.security.{odata}"), "id": artifact},
        })
    }

    /// A walk from `IOC` that links Lace Tempest through `COUNTERPART`, whose passive DNS
    /// names three hosts.
    async fn walker() -> (sim::SimHandle, Chainer, InFlightLookups) {
        let config = SimConfig::default();
        let sim = sim::spawn(config.clone()).await.expect("simulator starts");
        let control = sim.control();
        control.set_override(
            &format!("hosts/{IOC}/passiveDns"),
            json!([record(IOC, COUNTERPART, "ipAddress")]),
        );
        control.set_override(
            &format!("hosts/{COUNTERPART}/reputation"),
            json!({"id": COUNTERPART, "classification": "malicious", "score": 80,
                   "rules": [{"name": "Cyber Threat Intelligence", "description": "Lace Tempest"}]}),
        );
        let names: Vec<Value> = (0..3)
            .map(|i| {
                record(
                    COUNTERPART,
                    &format!("site-{i}.tenant-example.com"),
                    "hostname",
                )
            })
            .collect();
        control.set_override(&format!("hosts/{COUNTERPART}/passiveDns"), json!(names));
        let graph = GraphClient::new(GraphSettings {
            graph_base_url: sim.graph_base_url(),
            login_base_url: sim.login_base_url(),
            tenant_id: "sim-tenant".into(),
            client_id: config.client_id,
            client_secret: Secret::new(config.client_secret),
            ..GraphSettings::default()
        })
        .expect("client builds");
        let lookups = InFlightLookups::default();
        let chainer =
            Chainer::new(graph, None, ChainSettings::default()).with_in_flight(lookups.clone());
        (sim, chainer, lookups)
    }

    #[tokio::test]
    async fn a_walk_whose_fanout_lead_gives_up_measures_the_counterpart_itself() {
        let (sim, chainer, lookups) = walker().await;
        // Another walk leads the counterpart's measure (as one over its request budget would).
        let (lead, _) = in_flight::split(Some(&lookups.fanouts), vec![COUNTERPART.to_owned()]);
        let Ok(Normalised::Ready(ioc)) = normalise(IOC, None, &Default::default()) else {
            panic!("{IOC} is a ready observable");
        };
        let walk = tokio::spawn(async move { chainer.walk(&ioc).await });
        let following = async {
            while lookups.fanouts.followers(COUNTERPART) == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), following)
            .await
            .expect("the walk follows the lead");
        let pages = sim.count("passiveDns");
        drop(lead);

        let report = walk.await.expect("walk task").expect("walk");
        assert_eq!(
            sim.count("passiveDns") - pages,
            1,
            "the walk read the counterpart's page itself"
        );
        assert_eq!(report.sharing_pages, 1);
        let hit = report
            .hits
            .iter()
            .find(|hit| hit.artifact == COUNTERPART)
            .expect("a hit through the counterpart");
        let sharing: Vec<&str> = hit
            .factors
            .iter()
            .filter(|f| f.factor == "sharing")
            .map(|f| f.detail.as_str())
            .collect();
        assert_eq!(sharing, ["dedicated (3 names)"]);
        assert!(lookups.is_empty(), "every lookup closed");
    }

    #[test]
    fn a_counter_counts_distinct_names_up_to_a_page() {
        let mut counter = Counter::default();
        for i in 0..COUNTED + 10 {
            counter.insert(&format!("n{}", i % (COUNTED + 5)));
        }
        counter.insert("n1");
        assert_eq!(
            counter.fanout(false),
            Fanout {
                names: COUNTED as u32,
                more: true
            }
        );
        let mut few = Counter::default();
        few.insert("a");
        few.insert("a");
        assert_eq!(
            few.fanout(false),
            Fanout {
                names: 1,
                more: false
            }
        );
        assert!(few.fanout(true).more, "a cut listing may hold more");
    }
}
