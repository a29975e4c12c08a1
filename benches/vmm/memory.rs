//! Resident memory of a process by what it is, from `/proc/PID/smaps`: the page-cache
//! pages of its binaries (and shared libraries), shared by every process that maps the
//! same files, apart from its anonymous pages, which are its alone. PSS charges each
//! shared page to the processes mapping it in equal parts: what one more process costs.

/// Resident memory in KiB.
#[derive(Debug, Default, Clone, Copy)]
pub struct Memory {
    /// Everything resident (`VmRSS`).
    pub rss: f64,
    /// Proportional set size: shared pages divided among their processes.
    pub pss: f64,
    /// File pages of executable mappings: machine code.
    pub code: f64,
    /// The other file pages: constants, symbol and unwind tables.
    pub rodata: f64,
    /// Anonymous pages inside file mappings: data written at load (relocated
    /// pointers, RELRO), `.data`, `.bss`.
    pub data: f64,
    /// Every other anonymous page: heap, stacks, thread stacks.
    pub heap: f64,
}

impl Memory {
    /// The memory of process `pid` (NaN everywhere when its smaps cannot be read).
    pub fn of(pid: u32) -> Self {
        match std::fs::read_to_string(format!("/proc/{pid}/smaps")) {
            Ok(text) => Self::parse(&text),
            Err(_) => Self::nan(),
        }
    }

    fn nan() -> Self {
        let n = f64::NAN;
        Self {
            rss: n,
            pss: n,
            code: n,
            rodata: n,
            data: n,
            heap: n,
        }
    }

    /// Sum the `Rss`, `Pss` and `Anonymous` fields of an smaps text by mapping kind.
    fn parse(smaps: &str) -> Self {
        let mut m = Self::default();
        let (mut file, mut exec) = (false, false);
        let (mut rss, mut anon) = (0.0, 0.0);
        let flush = |m: &mut Self, file: bool, exec: bool, rss: f64, anon: f64| {
            m.rss += rss;
            match (file, exec) {
                (true, true) => m.code += rss - anon,
                (true, false) => m.rodata += rss - anon,
                // Not a file: every resident page is the process's own.
                (false, _) => m.heap += rss,
            }
            if file {
                m.data += anon;
            }
        };
        for line in smaps.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [range, perms, _, _, _, rest @ ..] if range.contains('-') => {
                    flush(&mut m, file, exec, rss, anon);
                    (rss, anon) = (0.0, 0.0);
                    file = rest.first().is_some_and(|p| !p.starts_with('['));
                    // The vDSO is code the kernel maps; count it with the code.
                    exec = perms.contains('x');
                    file |= exec;
                }
                ["Rss:", kib, ..] => rss = kib.parse().unwrap_or(f64::NAN),
                ["Pss:", kib, ..] => m.pss += kib.parse().unwrap_or(f64::NAN),
                ["Anonymous:", kib, ..] => anon = kib.parse().unwrap_or(f64::NAN),
                _ => {}
            }
        }
        flush(&mut m, file, exec, rss, anon);
        m
    }

    /// The file-backed part: shared with every process running the same binaries.
    pub fn file(&self) -> f64 {
        self.code + self.rodata
    }

    /// The anonymous part: this process's alone.
    pub fn anon(&self) -> f64 {
        self.data + self.heap
    }
}

/// The sample of median RSS (one real sample, so that its parts add up).
pub fn median(samples: &[Memory]) -> Memory {
    let mut sorted: Vec<Memory> = samples
        .iter()
        .filter(|m| !m.rss.is_nan())
        .copied()
        .collect();
    sorted.sort_by(|a, b| a.rss.total_cmp(&b.rss));
    sorted
        .get(sorted.len() / 2)
        .copied()
        .unwrap_or_else(Memory::nan)
}

/// One line: the total, its shared and private parts, and PSS.
pub fn describe(m: &Memory) -> String {
    format!(
        "RSS {:5.0} KiB = file {:5.0} (code {:5.0}, read-only data {:4.0}) + anon {:4.0} \
         (binary's data {:4.0}, heap and stacks {:4.0}); PSS {:5.0}",
        m.rss,
        m.file(),
        m.code,
        m.rodata,
        m.anon(),
        m.data,
        m.heap,
        m.pss
    )
}
