//! Guest profiler report: a histogram of sampled guest RIPs, resolved to kernel
//! functions through the guest kernel's `System.map`, written as plain text that diffs
//! well between runs.
//!
//! The vCPU loop samples RIPs; this module only counts and reports them, so it is free of
//! KVM and testable with a fake symbol map.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// RIPs below this are user mode (the canonical lower half).
const KERNEL_START: u64 = 0xffff_8000_0000_0000;

/// Report label for user-mode samples.
const USER: &str = "[user]";
/// Report label for kernel samples no text symbol covers.
const UNKNOWN: &str = "[unknown]";

/// Errors loading a symbol map.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The file could not be read.
    #[error("cannot read symbol map {}", path.display())]
    Read {
        /// The map's path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A line is not `<hex address> <type> <name>`.
    #[error("symbol map line {line} is not `<address> <type> <name>`: `{text}`")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
    /// The map holds no text (`t`, `T`, `W`) symbols: probably not a `System.map`.
    #[error("symbol map has no text symbols")]
    NoTextSymbols,
    /// The map at `path` is invalid.
    #[error("invalid symbol map {}", path.display())]
    Invalid {
        /// The map's path.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: Box<ProfileError>,
    },
}

/// One address of the map. Every non-absolute symbol is kept, so a text symbol ends
/// where the next symbol of any kind begins (RIPs past the end of text stay unknown).
#[derive(Debug)]
struct Symbol {
    addr: u64,
    name: Box<str>,
    text: bool,
    /// Preference among aliases at one address: global (`T`), weak (`W`), local (`t`),
    /// then non-text symbols.
    rank: u8,
}

/// Kernel symbols sorted by address, for resolving RIPs to functions.
#[derive(Debug)]
pub struct SymbolTable {
    symbols: Vec<Symbol>,
}

impl SymbolTable {
    /// Load a kernel `System.map`.
    pub fn from_system_map(path: &Path) -> Result<Self, ProfileError> {
        let text = fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|source| ProfileError::Invalid {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }

    /// Parse the text of a `System.map` (`nm -n` format).
    pub fn parse(map: &str) -> Result<Self, ProfileError> {
        let mut symbols = Vec::new();
        for (index, line) in map.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let symbol = parse_line(line).ok_or_else(|| ProfileError::Malformed {
                line: index + 1,
                text: line.to_owned(),
            })?;
            symbols.extend(symbol);
        }
        if !symbols.iter().any(|s: &Symbol| s.text) {
            return Err(ProfileError::NoTextSymbols);
        }
        // Stable sort: among aliases at one address the best ranked comes first, in map
        // order, and is the one kept.
        symbols.sort_by_key(|s| (s.addr, s.rank));
        symbols.dedup_by_key(|s| s.addr);
        Ok(SymbolTable { symbols })
    }

    /// The function containing `rip` and the offset of `rip` into it, or `None` if no
    /// text symbol covers it.
    pub fn resolve(&self, rip: u64) -> Option<(&str, u64)> {
        let after = self.symbols.partition_point(|s| s.addr <= rip);
        let symbol = self.symbols.get(after.checked_sub(1)?)?;
        symbol.text.then(|| (&*symbol.name, rip - symbol.addr))
    }

    /// Number of distinct symbol addresses.
    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    /// Whether the table is empty (never true for a parsed map).
    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }
}

/// One line of the map; `Some(None)` for symbols that mark no address range (absolute
/// and undefined ones).
fn parse_line(line: &str) -> Option<Option<Symbol>> {
    let mut fields = line.split_whitespace();
    let (addr, kind, name) = (fields.next()?, fields.next()?, fields.next()?);
    let addr = u64::from_str_radix(addr, 16).ok()?;
    let [kind] = kind.as_bytes() else {
        return None;
    };
    if matches!(kind, b'a' | b'A' | b'U' | b'w' | b'v') {
        return Some(None);
    }
    let rank = match kind {
        b'T' => 0,
        b'W' => 1,
        b't' => 2,
        _ => 3,
    };
    Some(Some(Symbol {
        addr,
        name: name.into(),
        text: rank < 3,
        rank,
    }))
}

/// Sample counts per guest RIP.
#[derive(Debug, Default, Clone)]
pub struct RipHistogram {
    counts: HashMap<u64, u64>,
}

impl RipHistogram {
    /// Count one sample at `rip`.
    pub fn add(&mut self, rip: u64) {
        *self.counts.entry(rip).or_default() += 1;
    }

    /// Add all samples of `other` (e.g. another vCPU's histogram).
    pub fn merge(&mut self, other: &RipHistogram) {
        for (&rip, &count) in &other.counts {
            *self.counts.entry(rip).or_default() += count;
        }
    }

    /// Total number of samples.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Number of distinct RIPs sampled.
    pub fn distinct(&self) -> usize {
        self.counts.len()
    }

    /// `(rip, count)` pairs, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.counts.iter().map(|(&rip, &count)| (rip, count))
    }
}

/// Sample counts per function, most sampled first (ties by name, so reports diff well).
fn by_function<'a>(hist: &RipHistogram, symbols: Option<&'a SymbolTable>) -> Vec<(&'a str, u64)> {
    let mut counts: HashMap<&str, u64> = HashMap::new();
    for (rip, count) in hist.iter() {
        let label = if rip < KERNEL_START {
            USER
        } else {
            symbols
                .and_then(|table| table.resolve(rip))
                .map_or(UNKNOWN, |(name, _)| name)
        };
        *counts.entry(label).or_default() += count;
    }
    let mut rows: Vec<(&str, u64)> = counts.into_iter().collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    rows
}

/// Write the profile: a header (total samples, distinct RIPs), then one line per
/// function with its sample count, percent and cumulative percent. User-mode RIPs are
/// grouped as `[user]`, kernel RIPs without a symbol (or without `symbols`) as
/// `[unknown]`.
pub fn write_report(
    hist: &RipHistogram,
    symbols: Option<&SymbolTable>,
    out: &mut dyn Write,
) -> io::Result<()> {
    let total = hist.total();
    writeln!(out, "# husk guest profile")?;
    writeln!(out, "# samples: {total}")?;
    writeln!(out, "# distinct RIPs: {}", hist.distinct())?;
    if symbols.is_none() {
        writeln!(out, "# symbols: none (kernel RIPs are [unknown])")?;
    }
    writeln!(
        out,
        "{:>10} {:>8} {:>8}  function",
        "samples", "%", "cumul%"
    )?;
    let mut cumulative = 0;
    for (function, count) in by_function(hist, symbols) {
        cumulative += count;
        writeln!(
            out,
            "{count:>10} {:>7.2}% {:>7.2}%  {function}",
            percent(count, total),
            percent(cumulative, total)
        )?;
    }
    Ok(())
}

fn percent(part: u64, total: u64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    // Sample counts stay far below 2^52, so the conversions are exact.
    part as f64 * 100.0 / total as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = "\
0000000000000000 A VDSO32_PRELINK
ffffffff81000000 T _stext
ffffffff81000000 T _text
ffffffff81001000 t do_one_initcall
ffffffff81002000 t __default_idle_alias
ffffffff81002000 T default_idle
ffffffff81003000 W arch_cpu_idle
ffffffff81004000 T _etext
ffffffff81004000 R __start_rodata
ffffffff82000000 D init_task
";

    fn table() -> SymbolTable {
        SymbolTable::parse(MAP).unwrap()
    }

    fn report(hist: &RipHistogram, symbols: Option<&SymbolTable>) -> String {
        let mut out = Vec::new();
        write_report(hist, symbols, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn histogram(samples: &[u64]) -> RipHistogram {
        let mut hist = RipHistogram::default();
        samples.iter().for_each(|&rip| hist.add(rip));
        hist
    }

    #[test]
    fn resolve_finds_the_function_and_offset() {
        assert_eq!(
            table().resolve(0xffff_ffff_8100_1010),
            Some(("do_one_initcall", 0x10))
        );
    }

    #[test]
    fn resolve_matches_a_symbol_start_exactly() {
        assert_eq!(
            table().resolve(0xffff_ffff_8100_3000),
            Some(("arch_cpu_idle", 0))
        );
    }

    #[test]
    fn resolve_prefers_a_global_alias_over_a_local_one() {
        assert_eq!(
            table().resolve(0xffff_ffff_8100_2004),
            Some(("default_idle", 4))
        );
    }

    #[test]
    fn resolve_gives_none_below_the_first_symbol() {
        assert_eq!(table().resolve(0xffff_ffff_80ff_ffff), None);
    }

    #[test]
    fn resolve_gives_none_in_data_after_the_text() {
        assert_eq!(table().resolve(0xffff_ffff_8200_0100), None);
    }

    #[test]
    fn parse_rejects_a_malformed_line_naming_it() {
        let err = SymbolTable::parse("ffffffff81000000 T _text\nnot a map\n").unwrap_err();
        assert!(matches!(err, ProfileError::Malformed { line: 2, .. }));
    }

    #[test]
    fn parse_rejects_a_map_without_text_symbols() {
        let err = SymbolTable::parse("ffffffff82000000 D init_task\n").unwrap_err();
        assert!(matches!(err, ProfileError::NoTextSymbols));
    }

    #[test]
    fn from_system_map_names_a_missing_file() {
        let err = SymbolTable::from_system_map(Path::new("/nonexistent/System.map")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/System.map"));
    }

    #[test]
    fn histogram_merge_adds_counts() {
        let mut a = histogram(&[1, 2, 2]);
        a.merge(&histogram(&[2, 3]));
        assert_eq!((a.total(), a.distinct()), (5, 3));
    }

    #[test]
    fn report_groups_by_function_sorted_by_count() {
        let hist = histogram(&[
            0xffff_ffff_8100_2000,
            0xffff_ffff_8100_2008,
            0xffff_ffff_8100_2010,
            0xffff_ffff_8100_1000,
            0x40_1000,
            0xffff_ffff_8200_0000,
            0xffff_ffff_8200_0000,
        ]);
        let expected = "\
# husk guest profile
# samples: 7
# distinct RIPs: 6
   samples        %   cumul%  function
         3   42.86%   42.86%  default_idle
         2   28.57%   71.43%  [unknown]
         1   14.29%   85.71%  [user]
         1   14.29%  100.00%  do_one_initcall
";
        assert_eq!(report(&hist, Some(&table())), expected);
    }

    #[test]
    fn report_without_symbols_puts_kernel_rips_in_unknown() {
        let hist = histogram(&[0xffff_ffff_8100_2000, 0x40_1000]);
        let text = report(&hist, None);
        assert!(text.contains("1   50.00%   50.00%  [unknown]"));
        assert!(text.contains("1   50.00%  100.00%  [user]"));
    }

    #[test]
    fn report_of_an_empty_histogram_has_only_the_header() {
        let text = report(&RipHistogram::default(), Some(&table()));
        assert_eq!(text.lines().count(), 4);
    }
}
