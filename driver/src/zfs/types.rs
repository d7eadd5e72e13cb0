//! Typed values parsed from `zfs get -H -p` and `zpool list -H -p` output.

use std::collections::BTreeMap;

/// Where a property's value comes from (the SOURCE column of `zfs get`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PropertySource {
    Local,
    Default,
    /// Inherited from the named ancestor.
    Inherited(String),
    Temporary,
    Received,
    /// `-`: read-only properties and unset user properties.
    None,
}

impl PropertySource {
    pub fn parse(source: &str) -> Self {
        match source {
            "local" => Self::Local,
            "default" => Self::Default,
            "temporary" => Self::Temporary,
            "received" => Self::Received,
            _ => match source.strip_prefix("inherited from ") {
                Some(ancestor) => Self::Inherited(ancestor.to_string()),
                None => Self::None,
            },
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PropertyValue {
    pub value: String,
    pub source: PropertySource,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetType {
    Filesystem,
    Volume,
    Snapshot,
}

impl DatasetType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Filesystem => "filesystem",
            Self::Volume => "volume",
            Self::Snapshot => "snapshot",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "filesystem" => Some(Self::Filesystem),
            "volume" => Some(Self::Volume),
            "snapshot" => Some(Self::Snapshot),
            _ => None,
        }
    }
}

/// A filesystem, volume or snapshot with the properties that were asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    pub name: String,
    pub properties: BTreeMap<String, PropertyValue>,
}

impl Dataset {
    pub fn property(&self, property: &str) -> Option<&PropertyValue> {
        self.properties.get(property)
    }

    /// The value of a property that is set; `None` for an unset user property (`-` with no
    /// source) or one that was not asked for.
    pub fn get(&self, property: &str) -> Option<&str> {
        let p = self.properties.get(property)?;
        if p.source == PropertySource::None && p.value == "-" {
            None
        } else {
            Some(p.value.as_str())
        }
    }

    /// A numeric property (`-p` prints exact integers); `None` when unset, `-` or `none`.
    pub fn get_u64(&self, property: &str) -> Option<u64> {
        self.get(property)?.parse().ok()
    }

    pub fn dataset_type(&self) -> Option<DatasetType> {
        self.get("type").and_then(DatasetType::parse)
    }
}

/// One line of `zfs get -H -p -o name,property,value,source`.
pub(crate) fn parse_get_output(output: &str) -> Result<Vec<Dataset>, String> {
    let mut datasets: Vec<Dataset> = Vec::new();
    for line in output.lines().filter(|l| !l.is_empty()) {
        let fields: Vec<&str> = line.split('\t').collect();
        let [name, property, value, source] = fields[..] else {
            return Err(format!("expected 4 tab-separated fields, got {line:?}"));
        };
        let entry = PropertyValue {
            value: value.to_string(),
            source: PropertySource::parse(source),
        };
        match datasets.last_mut() {
            Some(last) if last.name == name => {
                last.properties.insert(property.to_string(), entry);
            }
            _ => datasets.push(Dataset {
                name: name.to_string(),
                properties: BTreeMap::from([(property.to_string(), entry)]),
            }),
        }
    }
    Ok(datasets)
}

/// A pool: its space, fragmentation and health (`zpool list`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    pub size: u64,
    pub allocated: u64,
    pub free: u64,
    /// Free-space fragmentation in percent; `None` where the pool does not track it.
    pub fragmentation_percent: Option<u64>,
    pub health: String,
}

/// One line of `zpool list -H -p -o name,size,allocated,free,fragmentation,health`.
pub(crate) fn parse_pool_line(line: &str) -> Result<Pool, String> {
    let fields: Vec<&str> = line.trim_end().split('\t').collect();
    let [name, size, allocated, free, fragmentation, health] = fields[..] else {
        return Err(format!("expected 6 tab-separated fields, got {line:?}"));
    };
    let number = |s: &str| s.parse::<u64>().map_err(|e| format!("{s:?}: {e}"));
    Ok(Pool {
        name: name.to_string(),
        size: number(size)?,
        allocated: number(allocated)?,
        free: number(free)?,
        // `-` when the pool lacks the spacemap_histogram feature; `-p` prints no `%`.
        fragmentation_percent: fragmentation.trim_end_matches('%').parse().ok(),
        health: health.to_string(),
    })
}

impl Pool {
    pub fn is_healthy(&self) -> bool {
        self.health == "ONLINE"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_output_groups_properties_by_dataset_and_keeps_sources() {
        let out = "vms\tcompression\tlz4\tlocal\n\
                   vms/a\tcompression\tlz4\tinherited from vms\n\
                   vms/a\trefquota\t1073741824\tlocal\n\
                   vms/a\tzfs-csi.io:csi-name\t-\t-\n\
                   vms/a\tused\t24576\t-\n";
        let sets = parse_get_output(out).unwrap();
        assert_eq!(sets.len(), 2);
        let a = &sets[1];
        assert_eq!(a.name, "vms/a");
        assert_eq!(
            a.property("compression").unwrap().source,
            PropertySource::Inherited("vms".into())
        );
        assert_eq!(a.get_u64("refquota"), Some(1073741824));
        assert_eq!(a.get("zfs-csi.io:csi-name"), None);
        assert_eq!(a.get_u64("used"), Some(24576));
        assert_eq!(sets[0].property("compression").unwrap().source, PropertySource::Local);
    }

    #[test]
    fn malformed_get_output_is_an_error() {
        assert!(parse_get_output("vms\tcompression\tlz4\n").is_err());
    }

    #[test]
    fn pool_line_parses() {
        let p = parse_pool_line("vms\t4261412864\t1234\t4261411630\t7\tDEGRADED\n").unwrap();
        assert_eq!(p.fragmentation_percent, Some(7));
        assert_eq!(parse_pool_line("vms\t1\t1\t0\t-\tONLINE").unwrap().fragmentation_percent, None);
        assert_eq!(p.size, 4261412864);
        assert!(!p.is_healthy());
        assert!(parse_pool_line("vms\tx\t1\t2\t0\tONLINE").is_err());
    }
}
