//! `zfs-csi volumes` and `zfs-csi snapshots`: the driver's volumes and snapshots, read from
//! ZFS (the driver keeps no other state), as a table or JSON. The counterpart of OpenEBS's
//! `kubectl get zfsvolumes`, run in the node pod with `kubectl exec`.
//!
//! The driver's = carrying its marker (`managed-by` = the driver name) set locally on the
//! dataset or snapshot itself, the rule the delete path uses (`state::VolumeInfo`,
//! `state::SnapshotInfo`): an operator's snapshot of a volume, or a dataset created below
//! one, inherits the marker but is not the driver's.
//!
//! Cost, bounded by the driver's own datasets: one `zfs get -r -t filesystem,volume` per
//! parent (every dataset below the parents, not their snapshots), then `zfs get -d 1 -t
//! snapshot` of the driver's volumes only, 256 to a command: the snapshots of other datasets
//! in the pool (an operator's sanoid history of a dataset beside them) are never read.
//! A snapshot the driver took of an imported dataset is therefore not listed (that dataset
//! is not the driver's); ListSnapshots, which reads every snapshot below the parents, has it.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{CliError, ListArgs, ListFormat};
use crate::state::{prop, SnapshotInfo, VolumeInfo, SNAPSHOT_PROPERTIES, VOLUME_PROPERTIES};
use crate::zfs::{Dataset, DatasetType};

/// One of the driver's volumes, as listed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VolumeEntry {
    pub dataset: String,
    pub pvc_namespace: Option<String>,
    pub pvc_name: Option<String>,
    pub pv_name: Option<String>,
    /// `filesystem` or `zvol`.
    pub kind: &'static str,
    /// What the zvol carries (ext4, xfs, btrfs, block) or zfs, as the driver recorded it.
    pub fstype: Option<String>,
    /// The provisioned size: `refquota`/`quota` or `volsize`.
    pub capacity_bytes: u64,
    /// `used`: the volume, its snapshots and children.
    pub used_bytes: u64,
    /// `referenced`: the data the volume itself holds now.
    pub referenced_bytes: u64,
    /// `compressratio` of the volume.
    pub compressratio: f64,
    /// All snapshots of the dataset, the driver's and others' (they all keep it from being
    /// destroyed).
    pub snapshots: usize,
    /// The snapshot a clone was made from.
    pub origin: Option<String>,
    /// DeleteVolume was called, but snapshots or clones still depend on it: it goes with the
    /// last of them.
    pub deletion_pending: bool,
}

/// One of the driver's snapshots, as listed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SnapshotEntry {
    pub snapshot: String,
    /// The volume it was taken of (its dataset).
    pub volume: String,
    pub pvc_namespace: Option<String>,
    pub pvc_name: Option<String>,
    /// The CSI snapshot name (external-snapshotter's `snapshot-<VolumeSnapshot UID>`).
    pub csi_name: Option<String>,
    /// The source volume's size when it was taken: a restore's size.
    pub restore_size_bytes: u64,
    /// `used`: the space only this snapshot holds.
    pub used_bytes: u64,
    /// Seconds since the epoch, and the same in UTC as RFC 3339.
    pub creation_unix: i64,
    pub creation: String,
    /// Datasets cloned from it.
    pub clones: Vec<String>,
    /// Taken by the driver to clone a volume from a volume; not a VolumeSnapshot's.
    pub clone_for: Option<String>,
    /// DeleteSnapshot was called while it had clones (`zfs destroy -d`): it goes with the last.
    pub deletion_pending: bool,
}

fn volume_properties() -> Vec<&'static str> {
    let mut properties = VOLUME_PROPERTIES.to_vec();
    properties.extend(["used", "referenced", "compressratio", prop::PVC_NAMESPACE, prop::PVC_NAME, prop::PV_NAME]);
    properties
}

fn snapshot_properties() -> Vec<&'static str> {
    let mut properties = SNAPSHOT_PROPERTIES.to_vec();
    properties.push("used");
    properties
}

/// The driver's volumes below the parents, sorted by dataset name.
async fn driver_volumes(args: &ListArgs) -> Result<Vec<(VolumeInfo, Dataset)>, CliError> {
    let access = &args.zfs;
    let datasets = access
        .zfs()
        .get_below(&access.parents, &volume_properties(), &[DatasetType::Filesystem, DatasetType::Volume])
        .await
        .map_err(|e| access.failure("listing the datasets below the parents", e))?;
    Ok(datasets
        .into_iter()
        .filter_map(|d| VolumeInfo::from_dataset(&d, &access.driver_name).map(|v| (v, d)))
        .filter(|(v, _)| v.managed && access.parents.iter().any(|p| v.name.is_strictly_under(p)))
        .collect())
}

/// The snapshots of `volumes` (with `properties`), grouped by volume.
async fn snapshots_by_volume(args: &ListArgs, volumes: &[(VolumeInfo, Dataset)], properties: &[&str]) -> Result<BTreeMap<String, Vec<Dataset>>, CliError> {
    let names: Vec<String> = volumes.iter().map(|(v, _)| v.name.to_string()).collect();
    let snapshots = args
        .zfs
        .zfs()
        .snapshots_of(&names, properties)
        .await
        .map_err(|e| args.zfs.failure("listing the snapshots of the driver's volumes", e))?;
    let mut grouped: BTreeMap<String, Vec<Dataset>> = BTreeMap::new();
    for snapshot in snapshots {
        if let Some((volume, _)) = snapshot.name.split_once('@') {
            grouped.entry(volume.to_string()).or_default().push(snapshot);
        }
    }
    Ok(grouped)
}

pub async fn volumes(args: &ListArgs) -> Result<String, CliError> {
    let volumes = driver_volumes(args).await?;
    let snapshots = snapshots_by_volume(args, &volumes, &["type"]).await?;
    let entries: Vec<VolumeEntry> = volumes
        .iter()
        .map(|(volume, dataset)| volume_entry(volume, dataset, snapshots.get(volume.name.as_str()).map_or(0, Vec::len)))
        .collect();
    match args.output {
        ListFormat::Json => json(&entries),
        ListFormat::Table => Ok(volume_table(&entries)),
    }
}

pub async fn snapshots(args: &ListArgs) -> Result<String, CliError> {
    let volumes = driver_volumes(args).await?;
    let snapshots = snapshots_by_volume(args, &volumes, &snapshot_properties()).await?;
    let mut entries = Vec::new();
    for (volume, dataset) in &volumes {
        for snapshot in snapshots.get(volume.name.as_str()).into_iter().flatten() {
            let info = SnapshotInfo::from_dataset(snapshot, &args.zfs.driver_name);
            if info.managed {
                entries.push(snapshot_entry(&info, snapshot, dataset));
            }
        }
    }
    entries.sort_by(|a, b| a.snapshot.cmp(&b.snapshot));
    match args.output {
        ListFormat::Json => json(&entries),
        ListFormat::Table => Ok(snapshot_table(&entries)),
    }
}

fn json<T: Serialize>(entries: &T) -> Result<String, CliError> {
    let mut text = serde_json::to_string_pretty(entries).map_err(|e| CliError::Failed(format!("writing JSON: {e}")))?;
    text.push('\n');
    Ok(text)
}

/// The value of one of the driver's properties set on `dataset` itself.
fn own(dataset: &Dataset, property: &str) -> Option<String> {
    dataset
        .property(property)
        .filter(|p| p.source == crate::zfs::PropertySource::Local)
        .map(|p| p.value.clone())
}

fn volume_entry(volume: &VolumeInfo, dataset: &Dataset, snapshots: usize) -> VolumeEntry {
    VolumeEntry {
        dataset: volume.name.to_string(),
        pvc_namespace: own(dataset, prop::PVC_NAMESPACE),
        pvc_name: own(dataset, prop::PVC_NAME),
        pv_name: own(dataset, prop::PV_NAME),
        kind: volume.kind.as_str(),
        fstype: volume.fstype.clone(),
        capacity_bytes: volume.capacity,
        used_bytes: dataset.get_u64("used").unwrap_or(0),
        referenced_bytes: dataset.get_u64("referenced").unwrap_or(0),
        compressratio: dataset.get("compressratio").and_then(parse_ratio).unwrap_or(1.0),
        snapshots,
        origin: volume.origin.clone(),
        deletion_pending: volume.deleted,
    }
}

fn snapshot_entry(info: &SnapshotInfo, snapshot: &Dataset, volume: &Dataset) -> SnapshotEntry {
    SnapshotEntry {
        snapshot: info.name.clone(),
        volume: volume.name.clone(),
        pvc_namespace: own(volume, prop::PVC_NAMESPACE),
        pvc_name: own(volume, prop::PVC_NAME),
        csi_name: info.csi_name.clone(),
        restore_size_bytes: info.size_bytes,
        used_bytes: snapshot.get_u64("used").unwrap_or(0),
        creation_unix: info.creation,
        creation: rfc3339_utc(info.creation),
        clones: info.clones.clone(),
        clone_for: info.clone_for.clone(),
        deletion_pending: info.deferred_destroy,
    }
}

/// `compressratio` as `zfs get -p` prints it: `1.23` (older releases add an `x`).
fn parse_ratio(value: &str) -> Option<f64> {
    value.trim().trim_end_matches('x').parse().ok()
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (the proleptic Gregorian calendar, by
/// Howard Hinnant's days-to-civil algorithm), so that no date crate is needed for one column.
fn rfc3339_utc(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

/// Bytes for people: binary units, one decimal below 10.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value < 10.0 {
        format!("{:.1}{}", value, UNITS[unit]).replace(".0", "")
    } else {
        format!("{:.0}{}", value, UNITS[unit])
    }
}

fn claim(namespace: &Option<String>, name: &Option<String>) -> String {
    match (namespace, name) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        (None, Some(name)) => name.clone(),
        _ => "-".into(),
    }
}

fn dash(value: &Option<String>) -> String {
    value.clone().unwrap_or_else(|| "-".into())
}

fn yes_or_dash(flag: bool) -> String {
    if flag { "yes" } else { "-" }.to_string()
}

/// Rows under a header, each column as wide as its widest cell, two spaces apart.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn volume_table(entries: &[VolumeEntry]) -> String {
    let rows = entries
        .iter()
        .map(|v| {
            let kind = match &v.fstype {
                Some(fstype) if v.kind == "zvol" => format!("zvol/{fstype}"),
                _ => v.kind.to_string(),
            };
            vec![
                claim(&v.pvc_namespace, &v.pvc_name),
                v.dataset.clone(),
                kind,
                human(v.capacity_bytes),
                human(v.used_bytes),
                format!("{:.2}x", v.compressratio),
                v.snapshots.to_string(),
                dash(&v.origin),
                yes_or_dash(v.deletion_pending),
            ]
        })
        .collect();
    table(&["PVC", "DATASET", "KIND", "SIZE", "USED", "RATIO", "SNAPSHOTS", "ORIGIN", "DELETE-PENDING"], rows)
}

fn snapshot_table(entries: &[SnapshotEntry]) -> String {
    let rows = entries
        .iter()
        .map(|s| {
            let name = match &s.clone_for {
                Some(clone) => format!("(internal, for {clone})"),
                None => dash(&s.csi_name),
            };
            vec![
                s.snapshot.clone(),
                claim(&s.pvc_namespace, &s.pvc_name),
                name,
                human(s.restore_size_bytes),
                human(s.used_bytes),
                s.creation.clone(),
                if s.clones.is_empty() { "-".into() } else { s.clones.join(",") },
                yes_or_dash(s.deletion_pending),
            ]
        })
        .collect();
    table(&["SNAPSHOT", "SOURCE PVC", "CSI NAME", "SIZE", "USED", "CREATED", "CLONES", "DELETE-PENDING"], rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_seconds_become_utc_dates() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_796_000_000), "2026-11-30T00:53:20Z");
        assert_eq!(rfc3339_utc(4_107_542_399), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn sizes_and_ratios_read_for_people() {
        assert_eq!(human(512), "512B");
        assert_eq!(human(128 << 20), "128Mi");
        assert_eq!(human(1536 << 20), "1.5Gi");
        assert_eq!(human(1 << 30), "1Gi");
        assert_eq!(parse_ratio("1.83"), Some(1.83));
        assert_eq!(parse_ratio("2.00x"), Some(2.0));
        assert_eq!(parse_ratio("-"), None);
    }

    #[test]
    fn tables_align_columns() {
        let out = table(&["A", "BB"], vec![vec!["long-cell".into(), "x".into()], vec!["y".into(), "z".into()]]);
        assert_eq!(out, "A          BB\nlong-cell  x\ny          z\n");
    }
}
