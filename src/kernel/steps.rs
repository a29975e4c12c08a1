//! The build steps: each runs its tools with all output appended to the build log, and
//! fails with the step and the tool's exit status.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use super::cache::{remove_path, Layout};
use super::progress::Progress;
use super::{fragment, KernelError, Step, FRAGMENT, SERIES, SOURCE_PACKAGE};

/// Debian packages the kernel build needs.
const PACKAGES: &[&str] = &[
    SOURCE_PACKAGE,
    "bc",
    "flex",
    "bison",
    "libelf-dev",
    "libssl-dev",
    "xz-utils",
    "make",
    "gcc",
];

/// The source tarball installed by [`SOURCE_PACKAGE`].
const TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";

/// Objects compiled by a cold build of the shipped fragment (measured: `CC` and `AS`
/// lines of a full build), used for the bar until this cache has measured its own.
const COLD_BUILD_OBJECTS: u64 = 967;

/// Environment variables kbuild honours that would change where or how the kernel is
/// built (another output tree, a cross compiler, extra flags, a parent make's jobserver):
/// the cached kernel must depend on the fragment only.
const KBUILD_ENV_CLEARED: &[&str] = &[
    "KBUILD_OUTPUT",
    "KCONFIG_CONFIG",
    "CROSS_COMPILE",
    "LLVM",
    "KCFLAGS",
    "KCPPFLAGS",
    "KAFLAGS",
    "MAKEFLAGS",
    "MFLAGS",
    "MAKELEVEL",
];

/// The build's state: where things are, the open log, the progress output.
pub(super) struct Run<'a> {
    layout: &'a Layout,
    log: File,
    progress: &'a mut Progress,
}

impl<'a> Run<'a> {
    pub(super) fn new(layout: &'a Layout, log: File, progress: &'a mut Progress) -> Self {
        Run {
            layout,
            log,
            progress,
        }
    }

    /// Run every step up to a compiled `vmlinux` in the build tree; returns the Debian
    /// version of the source it was built from.
    pub(super) fn all(&mut self, jobs: usize) -> Result<String, KernelError> {
        self.stage(Step::Packages, Run::ensure_packages)?;
        let mut version = String::new();
        let fresh = self.stage(Step::Extract, |run| {
            version = run.source_version()?;
            run.ensure_source(&version)
        })?;
        self.stage(Step::Tinyconfig, |run| {
            run.make(Step::Tinyconfig, &["tinyconfig"])
        })?;
        self.stage(Step::MergeFragment, Run::merge_fragment)?;
        self.stage(Step::Olddefconfig, |run| {
            run.make(Step::Olddefconfig, &["olddefconfig"])
        })?;
        self.stage(Step::Verify, Run::verify)?;
        self.stage(Step::Compile, |run| run.compile(jobs, fresh))?;
        Ok(version)
    }

    /// Run `body` as one progress stage, also marked in the log.
    pub(super) fn stage<T>(
        &mut self,
        step: Step,
        body: impl FnOnce(&mut Self) -> Result<T, KernelError>,
    ) -> Result<T, KernelError> {
        self.progress.start(step);
        let marked = writeln!(self.log, "==> {step}");
        let result = marked
            .map_err(KernelError::io("write", self.layout.log()))
            .and_then(|()| body(self));
        self.progress.finish(result.is_ok());
        result
    }

    fn ensure_packages(&mut self) -> Result<(), KernelError> {
        let missing = self.missing_packages()?;
        if missing.is_empty() {
            return Ok(());
        }
        self.progress.note(&format!(
            "installing Debian packages: {}",
            missing.join(" ")
        ));
        let install = || {
            let mut cmd = Command::new("apt-get");
            cmd.args(["install", "-y", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive");
            cmd
        };
        if self.run(Step::Packages, &mut install()).is_ok() {
            return Ok(());
        }
        // The package lists may be stale or absent (fresh containers): refresh once.
        self.run(Step::Packages, Command::new("apt-get").arg("update"))?;
        self.run(Step::Packages, &mut install())
    }

    /// The packages of [`PACKAGES`] that dpkg does not list as installed.
    fn missing_packages(&mut self) -> Result<Vec<String>, KernelError> {
        // dpkg-query exits 1 when a package is unknown; the listed ones still print.
        let output = Command::new("dpkg-query")
            .arg("-W")
            .arg("-f=${Package} ${db:Status-Abbrev}\n")
            .args(PACKAGES)
            .stderr(Stdio::null())
            .output()
            .map_err(|source| spawn_error(Step::Packages, "dpkg-query", source))?;
        let listed = String::from_utf8_lossy(&output.stdout);
        Ok(missing_from_status(&listed))
    }

    fn source_version(&mut self) -> Result<String, KernelError> {
        let output = Command::new("dpkg-query")
            .args(["-W", "-f=${Version}", SOURCE_PACKAGE])
            .output()
            .map_err(|source| spawn_error(Step::Extract, "dpkg-query", source))?;
        let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if !output.status.success() || version.is_empty() {
            return Err(KernelError::SourceVersion {
                package: SOURCE_PACKAGE.to_owned(),
            });
        }
        Ok(version)
    }

    /// Make sure the build tree holds the source of `version`; returns true if it was
    /// (re-)extracted, i.e. the compile will be a cold one.
    fn ensure_source(&mut self, version: &str) -> Result<bool, KernelError> {
        let build = self.layout.build_dir();
        let tree = self.layout.tree();
        let stamp = build.join("source-version");
        let extracted = fs::read_to_string(&stamp).ok();
        if tree.is_dir() && extracted.as_deref().map(str::trim) == Some(version) {
            return Ok(false);
        }
        self.progress.note(&format!(
            "extracting {TARBALL} ({version}) into {}",
            tree.display()
        ));
        // Extract aside and rename, so an interrupted extraction is never mistaken for a
        // tree; the stamp is written last for the same reason.
        let aside = build.join("extract.tmp");
        remove_path(&stamp)?;
        remove_path(&tree)?;
        remove_path(&aside)?;
        fs::create_dir_all(&aside).map_err(KernelError::io("create", &aside))?;
        let mut tar = Command::new("tar");
        tar.arg("-xf").arg(TARBALL).arg("-C").arg(&aside);
        self.run(Step::Extract, &mut tar)?;
        let unpacked = aside.join(format!("linux-source-{SERIES}"));
        fs::rename(&unpacked, &tree).map_err(KernelError::io("rename", &unpacked))?;
        remove_path(&aside)?;
        fs::write(&stamp, format!("{version}\n")).map_err(KernelError::io("write", &stamp))?;
        Ok(true)
    }

    fn merge_fragment(&mut self) -> Result<(), KernelError> {
        let fragment_path = self.layout.build_dir().join("husk.config");
        fs::write(&fragment_path, FRAGMENT).map_err(KernelError::io("write", &fragment_path))?;
        let mut merge = Command::new("scripts/kconfig/merge_config.sh");
        merge
            .current_dir(self.layout.tree())
            .args(["-m", ".config"])
            .arg(&fragment_path);
        self.run(Step::MergeFragment, &mut merge)
    }

    fn verify(&mut self) -> Result<(), KernelError> {
        let path = self.layout.tree().join(".config");
        let dot_config = fs::read_to_string(&path).map_err(KernelError::io("read", &path))?;
        fragment::verify(FRAGMENT, &dot_config)
    }

    /// `make` in the tree with `ARCH=x86_64` and the given arguments.
    fn make(&mut self, step: Step, args: &[&str]) -> Result<(), KernelError> {
        let mut make = self.make_command();
        make.args(args);
        self.run(step, &mut make)
    }

    fn make_command(&self) -> Command {
        let mut make = Command::new("make");
        make.current_dir(self.layout.tree()).arg("ARCH=x86_64");
        for name in KBUILD_ENV_CLEARED {
            make.env_remove(name);
        }
        make
    }

    /// `make vmlinux`, counting compiled objects on the progress bar. A cold build's
    /// count is saved as the expected total of the next cold build.
    fn compile(&mut self, jobs: usize, cold: bool) -> Result<(), KernelError> {
        let count_file = self.layout.build_dir().join("objects");
        let expected = cold.then(|| {
            fs::read_to_string(&count_file)
                .ok()
                .and_then(|text| text.trim().parse().ok())
                .unwrap_or(COLD_BUILD_OBJECTS)
        });
        self.progress.count_objects(expected);
        let mut make = self.make_command();
        make.arg(format!("-j{jobs}")).arg("vmlinux");
        let compiled = self.run_counting(Step::Compile, &mut make)?;
        if cold {
            fs::write(&count_file, format!("{compiled}\n"))
                .map_err(KernelError::io("write", &count_file))?;
        }
        Ok(())
    }

    /// Run a tool, its stdout and stderr appended to the log.
    fn run(&mut self, step: Step, cmd: &mut Command) -> Result<(), KernelError> {
        let (stdout, stderr) = (self.log_handle()?, self.log_handle()?);
        self.log_command(cmd)?;
        let status = cmd
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .status()
            .map_err(|source| spawn_error(step, program(cmd), source))?;
        self.check(step, status)
    }

    /// Like [`Run::run`], but read stdout line by line to count compiled objects;
    /// returns the count.
    fn run_counting(&mut self, step: Step, cmd: &mut Command) -> Result<u64, KernelError> {
        let stderr = self.log_handle()?;
        self.log_command(cmd)?;
        let mut child = cmd
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|source| spawn_error(step, program(cmd), source))?;
        let stdout = child.stdout.take().expect("stdout was set to piped");
        let copied = self.copy_counting(BufReader::new(stdout));
        if copied.is_err() {
            // Do not leave make running behind a failed log write.
            let _ = child.kill();
        }
        let status = child
            .wait()
            .map_err(|source| spawn_error(step, program(cmd), source))?;
        let compiled = copied?;
        self.check(step, status)?;
        Ok(compiled)
    }

    fn copy_counting(&mut self, mut out: impl BufRead) -> Result<u64, KernelError> {
        let log_err = KernelError::io("write", self.layout.log());
        let mut line = Vec::new();
        let mut compiled = 0;
        loop {
            line.clear();
            match out.read_until(b'\n', &mut line) {
                Ok(0) => return Ok(compiled),
                Ok(_) => {}
                Err(err) => return Err(log_err(err)),
            }
            if let Err(err) = self.log.write_all(&line) {
                return Err(log_err(err));
            }
            if is_compile_line(&line) {
                compiled += 1;
                self.progress.object_done();
            }
        }
    }

    fn check(&self, step: Step, status: std::process::ExitStatus) -> Result<(), KernelError> {
        if status.success() {
            return Ok(());
        }
        Err(KernelError::StepFailed {
            step,
            status,
            log: self.layout.log().to_path_buf(),
        })
    }

    fn log_handle(&self) -> Result<File, KernelError> {
        self.log.try_clone().map_err(KernelError::io(
            "duplicate the handle of",
            self.layout.log(),
        ))
    }

    fn log_command(&mut self, cmd: &Command) -> Result<(), KernelError> {
        writeln!(self.log, "$ {cmd:?}").map_err(KernelError::io("write", self.layout.log()))
    }
}

fn program(cmd: &Command) -> String {
    cmd.get_program().to_string_lossy().into_owned()
}

fn spawn_error(step: Step, program: impl Into<String>, source: std::io::Error) -> KernelError {
    KernelError::Spawn {
        step,
        program: program.into(),
        source,
    }
}

/// Packages of [`PACKAGES`] not marked installed (`ii`) in `dpkg-query` output of the
/// form `<package> <status-abbrev>` per line.
fn missing_from_status(listed: &str) -> Vec<String> {
    let installed: Vec<&str> = listed
        .lines()
        .filter_map(|line| line.split_once(' '))
        .filter(|(_, status)| status.trim() == "ii")
        .map(|(name, _)| name)
        .collect();
    PACKAGES
        .iter()
        .filter(|package| !installed.contains(package))
        .map(|package| (*package).to_owned())
        .collect()
}

/// Whether a line of kbuild's quiet output reports compiling an object (`  CC  x.o`,
/// `  AS  x.o`; host tools such as `HOSTCC` are not counted).
fn is_compile_line(line: &[u8]) -> bool {
    line.starts_with(b"  CC ") || line.starts_with(b"  AS ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_layout() -> (tempfile::TempDir, Layout) {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::new(tmp.path(), "6.1-test");
        (tmp, layout)
    }

    fn shell(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[test]
    fn run_fails_with_the_step_and_exit_status_and_logs_the_output() {
        let (_tmp, layout) = temp_layout();
        let mut progress = Progress::new(false);
        let mut run = Run::new(&layout, layout.open_log().unwrap(), &mut progress);
        let err = run
            .run(Step::Tinyconfig, &mut shell("echo boom; exit 3"))
            .unwrap_err();
        let KernelError::StepFailed { step, status, .. } = err else {
            panic!("unexpected error {err}");
        };
        assert_eq!((step, status.code()), (Step::Tinyconfig, Some(3)));
        assert!(fs::read_to_string(layout.log()).unwrap().contains("boom"));
    }

    #[test]
    fn run_names_a_program_that_cannot_start() {
        let (_tmp, layout) = temp_layout();
        let mut progress = Progress::new(false);
        let mut run = Run::new(&layout, layout.open_log().unwrap(), &mut progress);
        let err = run
            .run(Step::Extract, &mut Command::new("/nonexistent/husk-tar"))
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/husk-tar"));
    }

    #[test]
    fn run_counting_counts_compiled_objects_and_logs_every_line() {
        let (_tmp, layout) = temp_layout();
        let mut progress = Progress::new(false);
        let mut run = Run::new(&layout, layout.open_log().unwrap(), &mut progress);
        let script = "printf '  CC      a.o\\n  HOSTCC  fixdep\\n  AS      b.o\\n'";
        let compiled = run.run_counting(Step::Compile, &mut shell(script)).unwrap();
        assert_eq!(compiled, 2);
        assert!(fs::read_to_string(layout.log())
            .unwrap()
            .contains("HOSTCC  fixdep"));
    }

    #[test]
    fn missing_from_status_lists_unknown_and_half_installed_packages() {
        let listed = "bc ii \nflex ii \nbison rc \nlibelf-dev ii \nlibssl-dev ii \n\
                      xz-utils ii \nmake ii \ngcc ii \n";
        assert_eq!(
            missing_from_status(listed),
            vec![SOURCE_PACKAGE.to_owned(), "bison".to_owned()]
        );
    }

    #[test]
    fn missing_from_status_is_empty_when_all_are_installed() {
        let listed: String = PACKAGES.iter().map(|p| format!("{p} ii \n")).collect();
        assert!(missing_from_status(&listed).is_empty());
    }

    #[test]
    fn compile_lines_count_cc_and_as_but_not_host_tools() {
        let lines: [&[u8]; 4] = [
            b"  CC      init/main.o\n",
            b"  AS      arch/x86/entry/entry_64.o\n",
            b"  HOSTCC  scripts/kallsyms\n",
            b"  LD      vmlinux.o\n",
        ];
        let counted: Vec<bool> = lines.iter().map(|line| is_compile_line(line)).collect();
        assert_eq!(counted, [true, true, false, false]);
    }
}
