//! Cloud disks as a pod's volume parameters name them: the categories, ESSD performance levels and
//! the sizes each takes, and the size a `size` parameter asks for. The CSI driver sizes disks by
//! these; the scheduler refuses a pod whose disk no category could hold; the pod runner reads the
//! size the same way.

/// The categories CreateDisk takes.
pub const CATEGORIES: [&str; 4] = ["cloud_essd", "cloud_ssd", "cloud_efficiency", "cloud_auto"];
/// The category of a disk volume that names none.
pub const DEFAULT_CATEGORY: &str = "cloud_essd";
/// The performance levels of `cloud_essd` (and only of it).
pub const ESSD_LEVELS: [&str; 4] = ["PL0", "PL1", "PL2", "PL3"];
/// The level of a `cloud_essd` disk that names none.
pub const DEFAULT_ESSD_LEVEL: &str = "PL0";

/// Data disk size limits (GiB, inclusive) of a category and performance level ("" for a category
/// without levels), as the cloud publishes them; `None` for a pair the cloud does not sell. The
/// local cloud refuses disks by this table.
pub fn published_size_limits_gib(category: &str, level: &str) -> Option<(i64, i64)> {
    match (category, level) {
        ("cloud_essd", "PL0") => Some((1, 65_536)),
        ("cloud_essd", "PL1") => Some((20, 65_536)),
        ("cloud_essd", "PL2") => Some((461, 65_536)),
        ("cloud_essd", "PL3") => Some((1_261, 65_536)),
        ("cloud_ssd" | "cloud_efficiency", "") => Some((20, 32_768)),
        ("cloud_auto", "") => Some((1, 65_536)),
        _ => None,
    }
}

/// The size limits a volume of `category` and `level` is sized by: the published ones, a level
/// ignored where the category has none, and those of the older categories for anything else
/// (which CreateDisk then refuses by name).
pub fn size_limits_gib(category: &str, level: Option<&str>) -> (i64, i64) {
    let level = if category == "cloud_essd" { level.unwrap_or("") } else { "" };
    published_size_limits_gib(category, level).unwrap_or((20, 32_768))
}

/// Bytes from `123`, `512Mi`, `20Gi`, `1Ti`, `10G`, `500M`, `1K`, `1Ki`; `None` for anything
/// else, for 0 and for a size beyond `i64`.
pub fn parse_size(text: &str) -> Option<i64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: i64 = num.parse().ok()?;
    let mult: i64 = match unit {
        "" => 1,
        "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult).filter(|b| *b > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_category_and_level_has_a_range() {
        for c in CATEGORIES {
            let (min, max) = size_limits_gib(c, (c == "cloud_essd").then_some(DEFAULT_ESSD_LEVEL));
            assert!(0 < min && min <= max, "{c}");
        }
        assert_eq!(size_limits_gib("cloud_essd", Some("PL3")), (1_261, 65_536));
        assert_eq!(size_limits_gib("cloud_efficiency", None), (20, 32_768));
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("20Gi"), Some(20 << 30));
        assert_eq!(parse_size("10G"), Some(10_000_000_000));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("9999999999Ti"), None);
        assert_eq!(parse_size("-1"), None);
    }
}
