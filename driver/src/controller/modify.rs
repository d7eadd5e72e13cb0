//! ControllerModifyVolume: a VolumeAttributesClass's ZFS properties applied to a live volume,
//! by the rule CreateVolume follows (docs/DESIGN.md section 5): a value equal to the parent's
//! effective value is inherited again, never copied; any other is set locally.

use super::*;

/// What a modification does to a volume: properties to set locally, properties to inherit
/// again. Both empty when the volume already is as asked (a repeat).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct ModifyPlan {
    pub(super) set: Properties,
    pub(super) inherit: Vec<&'static str>,
}

/// The plan for `wanted` on a volume whose properties are `current` below a parent whose
/// effective values are `parent`.
pub(super) fn modify_plan(wanted: &BTreeMap<&'static str, String>, current: &Dataset, parent: &Dataset) -> ModifyPlan {
    let mut plan = ModifyPlan::default();
    for (&key, value) in wanted {
        let now = current.property(key);
        let local = now.is_some_and(|p| matches!(p.source, PropertySource::Local | PropertySource::Received));
        if parent.get(key) == Some(value.as_str()) {
            if local {
                plan.inherit.push(key);
            }
        } else if !(local && now.is_some_and(|p| p.value == *value)) {
            plan.set.push((key.to_string(), value.clone()));
        }
    }
    plan
}

impl ControllerService {
    /// Applies `parameters` to the volume `volume_id` on this node. Validation in the spec's
    /// order; NOT_FOUND for a volume that is not here, which on a cluster of several ZFS
    /// nodes may mean another node's (the leader-elected csi-resizer calls the driver on its
    /// own node only): nothing is changed then, and the message names this node.
    pub(super) async fn modify_volume(&self, volume_id: &str, parameters: &HashMap<String, String>) -> Result<(), Status> {
        let not_here = || {
            Status::not_found(format!(
                "volume {volume_id} does not exist on this node ({}): ControllerModifyVolume reaches the driver on the \
                 node of the leader-elected csi-resizer, and only that node's volumes can be modified there \
                 (README, \"Changing properties of live volumes\")",
                self.driver.node_id
            ))
        };
        let name = self.driver.volume_name(volume_id)?.ok_or_else(not_here)?;
        let wanted = MutableParams::parse(parameters)
            .map_err(|e| Status::invalid_argument(format!("mutable_parameters (VolumeAttributesClass): {e}")))?;
        let _lock = self.driver.lock(LockKey::Volume(name.to_string()))?;
        let volume = self.driver.volume(&name).await?.filter(|v| !v.deleted).ok_or_else(not_here)?;
        if !volume.managed {
            return Err(Status::failed_precondition(format!(
                "volume {name} was not created by this driver ({} is not set on it): its properties are the \
                 operator's to change with zfs set",
                prop::MANAGED_BY
            )));
        }
        let zvol = volume.kind == VolumeKind::Zvol;
        let applicable = wanted.applicable(zvol);
        if zvol && wanted.properties.contains_key("recordsize") {
            tracing::info!(volume = %name, "recordsize does not apply to a zvol (its volblocksize is fixed at creation): left out");
        }
        if applicable.contains_key("special_small_blocks") {
            let pool = name.pool();
            let special = self
                .driver
                .zfs
                .has_special_vdev(pool)
                .await
                .map_err(|e| zfs_status(&format!("reading the vdevs of pool {pool}"), e))?;
            if !special {
                return Err(Status::invalid_argument(format!(
                    "special_small_blocks: pool {pool} has no special vdev, so no block of volume {name} could go to one"
                )));
            }
        }
        let zfs = &self.driver.zfs;
        let keys: Vec<&str> = applicable.keys().copied().collect();
        let mut plan = ModifyPlan::default();
        if !keys.is_empty() {
            let parent = name.parent().unwrap_or_else(|| name.clone());
            let current = zfs.get_one(&name, &keys).await.map_err(|e| zfs_status(&format!("reading volume {name}"), e))?;
            let effective = zfs
                .get_one(&parent, &keys)
                .await
                .map_err(|e| zfs_status(&format!("reading the properties of {parent}"), e))?;
            plan = modify_plan(&applicable, &current, &effective);
        }
        let recorded = MutableParams::from_canonical(volume.mutable_parameters.as_deref().unwrap_or_default())
            .merged(&MutableParams { properties: applicable })
            .canonical();
        if volume.mutable_parameters.as_deref().unwrap_or_default() != recorded {
            plan.set.push((prop::MUTABLE_PARAMETERS.to_string(), recorded.clone()));
        }
        if plan == ModifyPlan::default() {
            tracing::debug!(volume = %name, "already as asked");
            return Ok(());
        }
        // Inherit first and record last (in the same `zfs set` as the local values): what
        // is recorded has been applied, and a retry after a failure half-way converges.
        for key in &plan.inherit {
            zfs.inherit(&name, key)
                .await
                .map_err(|e| zfs_status(&format!("inheriting {key} on volume {name}"), e))?;
        }
        zfs.set(&name, &plan.set)
            .await
            .map_err(|e| zfs_status(&format!("modifying volume {name}"), e))?;
        let set: Vec<String> = plan.set.iter().filter(|(k, _)| !k.starts_with(prop::PREFIX)).map(|(k, v)| format!("{k}={v}")).collect();
        tracing::info!(volume = %name, set = %set.join(","), inherited = %plan.inherit.join(","), parameters = %recorded, "modified");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zfs::PropertyValue;

    fn dataset(props: &[(&str, &str, &str)]) -> Dataset {
        Dataset {
            name: "vms/pvc-1".into(),
            properties: props
                .iter()
                .map(|(k, v, s)| (k.to_string(), PropertyValue { value: v.to_string(), source: PropertySource::parse(s) }))
                .collect(),
        }
    }

    fn wanted(pairs: &[(&'static str, &str)]) -> BTreeMap<&'static str, String> {
        pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
    }

    #[test]
    fn a_value_other_than_the_parents_is_set_and_the_parents_value_is_inherited_again() {
        let parent = dataset(&[("compression", "lz4", "local"), ("atime", "on", "default")]);
        let inherited = dataset(&[("compression", "lz4", "inherited from vms"), ("atime", "on", "default")]);
        let plan = modify_plan(&wanted(&[("compression", "zstd"), ("atime", "on")]), &inherited, &parent);
        assert_eq!(plan.set, [("compression".to_string(), "zstd".to_string())]);
        assert!(plan.inherit.is_empty(), "atime is already the parent's");

        let local = dataset(&[("compression", "zstd", "local"), ("atime", "off", "local")]);
        let plan = modify_plan(&wanted(&[("compression", "lz4"), ("atime", "on")]), &local, &parent);
        assert!(plan.set.is_empty());
        assert_eq!(plan.inherit, ["atime", "compression"]);
    }

    #[test]
    fn a_repeat_plans_nothing() {
        let parent = dataset(&[("compression", "lz4", "local"), ("recordsize", "131072", "default")]);
        let done = dataset(&[("compression", "zstd", "local"), ("recordsize", "131072", "inherited from vms")]);
        assert_eq!(modify_plan(&wanted(&[("compression", "zstd"), ("recordsize", "131072")]), &done, &parent), ModifyPlan::default());
    }
}
