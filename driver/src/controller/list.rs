//! Listing: volumes and snapshots below the parents, and pagination by name.

use super::*;

pub(super) fn topology_matches(driver: &Driver, topology: &csi::Topology) -> bool {
    topology.segments.get(&driver.topology_key()) == Some(&driver.node_id)
}

pub(super) fn csi_volume(volume: &VolumeInfo, topology: csi::Topology) -> csi::Volume {
    csi::Volume {
        capacity_bytes: volume.capacity as i64,
        volume_id: volume.name.to_string(),
        volume_context: volume.volume_context(),
        content_source: volume.content_source.as_deref().and_then(content_source_from_property),
        accessible_topology: vec![topology],
    }
}

/// ListVolumes/ListSnapshots pagination over a list sorted by name. The token names the last
/// entry returned (`after:<name>`), so volumes created or deleted between two pages neither
/// repeat nor skip entries. A token that is not one of ours is ABORTED, as the spec asks.
pub(super) fn paginate<T>(items: Vec<T>, max_entries: i32, starting_token: &str, name: impl Fn(&T) -> &str) -> Result<(Vec<T>, String), Status> {
    if max_entries < 0 {
        return Err(Status::invalid_argument("max_entries must not be negative"));
    }
    let after = match starting_token {
        "" => None,
        token => match token.strip_prefix(TOKEN_PREFIX) {
            Some(last) if !last.is_empty() => Some(last.to_string()),
            _ => {
                return Err(Status::aborted(format!(
                    "starting_token {starting_token:?} is not a token this driver gave; list again from the start"
                )))
            }
        },
    };
    let mut remaining = items.into_iter().filter(|item| after.as_deref().is_none_or(|last| name(item) > last));
    let page: Vec<T> = if max_entries == 0 {
        remaining.by_ref().collect()
    } else {
        remaining.by_ref().take(max_entries as usize).collect()
    };
    let next = match (remaining.next(), page.last()) {
        (Some(_), Some(last)) => format!("{TOKEN_PREFIX}{}", name(last)),
        _ => String::new(),
    };
    Ok((page, next))
}

pub(super) const TOKEN_PREFIX: &str = "after:";

impl ControllerService {

    /// The driver's volumes and snapshots below all parents (nested parents listed once).
    pub(super) async fn list_below_parents(&self, properties: &[&str], types: &[DatasetType]) -> Result<Vec<crate::zfs::Dataset>, Status> {
        self.driver
            .zfs
            .get_below(&self.driver.parents, properties, types)
            .await
            .map_err(|e| zfs_status("listing the parents", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagination_walks_the_list_and_rejects_foreign_tokens() {
        let items: Vec<String> = ["a", "b", "c", "d", "e"].iter().map(|s| s.to_string()).collect();
        let name = |s: &String| s.as_str().to_owned();
        let page = |items: Vec<String>, max, token: &str| {
            paginate(items, max, token, |s| s.as_str()).map(|(p, next)| (p.iter().map(name).collect::<Vec<_>>(), next))
        };
        assert_eq!(page(items.clone(), 2, "").unwrap(), (vec!["a".into(), "b".into()], "after:b".into()));
        assert_eq!(page(items.clone(), 2, "after:d").unwrap(), (vec!["e".into()], String::new()));
        assert_eq!(page(items.clone(), 0, "").unwrap().0.len(), 5);
        assert_eq!(page(items.clone(), 2, "after:e").unwrap(), (vec![], String::new()));
        // An entry created before the token's position does not shift the next page.
        let mut grown = items.clone();
        grown.insert(0, "0".into());
        assert_eq!(page(grown, 2, "after:b").unwrap().0, ["c", "d"]);
        for bad in ["3", "bogus", "after:"] {
            assert_eq!(page(items.clone(), 2, bad).unwrap_err().code(), tonic::Code::Aborted, "{bad}");
        }
        assert_eq!(page(items, -1, "").unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
