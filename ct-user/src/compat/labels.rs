//! Connection labels the way conntrack 1.4.7 names them: libnetfilter_conntrack's
//! label map (`/etc/xtables/connlabel.conf`, lines `BIT NAME`, BIT 0..127) and the
//! label bitmap as ctnetlink carries it (`CTA_LABELS`: 32-bit words in host order).

use std::collections::BTreeSet;

/// Where libnetfilter_conntrack reads the map (`nfct_labelmap_new(NULL)`); conntrack
/// has no option to name another file.
pub const MAP_FILE: &str = "/etc/xtables/connlabel.conf";

/// Label bits 0..=127 (`XT_CONNLABEL_MAXBIT`).
const MAX_BIT: u64 = 127;

/// Names by bit, in file order.
#[derive(Debug, Clone, Default)]
pub struct LabelMap {
    names: Vec<(u32, String)>,
}

impl LabelMap {
    /// Reads the map file; the error is what perror would print after
    /// `nfct_labelmap_new: `.
    pub fn load() -> Result<Self, String> {
        let text = std::fs::read(MAP_FILE).map_err(|e| {
            std::io::Error::from_raw_os_error(e.raw_os_error().unwrap_or(libc::ENOENT))
                .to_string()
                .split(" (os error")
                .next()
                .unwrap_or_default()
                .to_owned()
        })?;
        Ok(Self::parse(&String::from_utf8_lossy(&text)))
    }

    /// libnetfilter_conntrack's parser: `#` lines are comments; a number (strtoul base
    /// 0, at most 127), then the rest of the line without surrounding blanks is the name;
    /// the first name of a bit wins.
    pub fn parse(text: &str) -> Self {
        let mut map = LabelMap::default();
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let s = line.trim_start();
            let (radix, digits) =
                if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                    (16, h)
                } else if s.starts_with('0') {
                    (8, s)
                } else {
                    (10, s)
                };
            let end = digits
                .find(|c: char| !c.is_digit(radix))
                .unwrap_or(digits.len());
            let Ok(bit) = u64::from_str_radix(&digits[..end], radix) else {
                continue;
            };
            if bit > MAX_BIT {
                continue;
            }
            let name = digits[end..].trim();
            if name.is_empty() || map.names.iter().any(|(b, _)| u64::from(*b) == bit) {
                continue;
            }
            map.names.push((bit as u32, name.to_owned()));
        }
        map
    }

    pub fn bit(&self, name: &str) -> Option<u32> {
        self.names.iter().find(|(_, n)| n == name).map(|(b, _)| *b)
    }

    pub fn name(&self, bit: u32) -> Option<&str> {
        self.names
            .iter()
            .find(|(b, _)| *b == bit)
            .map(|(_, n)| n.as_str())
    }
}

/// The set bits of a `CTA_LABELS` value.
pub fn bits_of(bytes: &[u8]) -> BTreeSet<u32> {
    let mut bits = BTreeSet::new();
    for (w, chunk) in bytes.chunks(4).enumerate() {
        let mut word = [0u8; 4];
        word[..chunk.len()].copy_from_slice(chunk);
        let word = u32::from_ne_bytes(word);
        for b in 0..32 {
            if word & (1 << b) != 0 {
                bits.insert(w as u32 * 32 + b);
            }
        }
    }
    bits
}

/// A `CTA_LABELS` value with these bits, at least `min_len` bytes long (whole words).
pub fn bytes_of(bits: &BTreeSet<u32>, min_len: usize) -> Vec<u8> {
    let words = bits
        .iter()
        .next_back()
        .map_or(1, |b| *b as usize / 32 + 1)
        .max(min_len.div_ceil(4));
    let mut v = vec![0u32; words];
    for b in bits {
        v[*b as usize / 32] |= 1 << (b % 32);
    }
    v.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

/// ` labels=a,b` as libnetfilter_conntrack prints it: the named set bits in bit order;
/// with none named it prints `labels` alone. Nothing when the entry has no labels.
pub fn suffix(map: &LabelMap, labels: Option<&[u8]>) -> String {
    let Some(bytes) = labels else {
        return String::new();
    };
    let names = names(map, bytes);
    if names.is_empty() {
        " labels".into()
    } else {
        format!(" labels={}", names.join(","))
    }
}

/// The names of the set bits that the map names, in bit order.
pub fn names(map: &LabelMap, bytes: &[u8]) -> Vec<String> {
    bits_of(bytes)
        .into_iter()
        .filter_map(|b| map.name(b).filter(|n| !n.is_empty()).map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_file_forms() {
        let m = LabelMap::parse(
            "# c\n0\teth0-in\n010 oct\n 1 two words \n2\n200 big\n0x3 hex\n1 dup\n",
        );
        assert_eq!(m.bit("eth0-in"), Some(0));
        assert_eq!(m.name(1), Some("two words"));
        assert_eq!(m.name(2), None);
        assert_eq!(m.bit("big"), None);
        assert_eq!(m.bit("hex"), Some(3));
        assert_eq!(m.bit("dup"), None);
        assert_eq!(m.bit("oct"), Some(8));
    }

    #[test]
    fn bitmap_roundtrip_and_suffix() {
        let bits: BTreeSet<u32> = [0, 2, 40].into();
        let b = bytes_of(&bits, 16);
        assert_eq!(b.len(), 16);
        assert_eq!(bits_of(&b), bits);
        let m = LabelMap::parse("0 a\n40 z\n");
        assert_eq!(suffix(&m, Some(&b)), " labels=a,z");
        assert_eq!(suffix(&m, Some(&bytes_of(&[5].into(), 0))), " labels");
        assert_eq!(suffix(&m, None), "");
    }
}
