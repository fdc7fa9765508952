//! `hark serve` with a configuration file, as a process: a malformed file, a value of the wrong
//! type or a bad value stops it with exit code 2 before it listens, naming the file, the key and
//! the line; environment variables win over the file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A folder of its own under the system temporary folder, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "hark-config-test-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.0.join(name), text).expect("write");
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `hark serve <args>` in `dir` with only `PATH` and `env` set; it must exit on its own.
fn serve(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let Output { status, stderr, .. } = Command::new(env!("CARGO_BIN_EXE_hark"))
        .arg("serve")
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("hark runs");
    (status.code(), String::from_utf8_lossy(&stderr).into_owned())
}

#[test]
fn bad_configuration_files_stop_serve_with_code_2() {
    let dir = TempDir::new("bad");
    dir.write("bad.toml", "[call]\nstop_ms = \"soon\"\n");
    let (code, err) = serve(&dir.0, &["--config", "bad.toml"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(
            "HARK_STOP_MS (call.stop_ms): \"soon\" is not a valid number (bad.toml line 2)"
        ),
        "{err}"
    );

    dir.write("bad.toml", "[call]\nstop_ms = 600\n[call\n");
    let (code, err) = serve(&dir.0, &["--config", "bad.toml"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--config: bad.toml line 3, column"), "{err}");

    dir.write("bad.toml", "[limits]\nidle_timeout_s = [30]\n");
    let (code, err) = serve(&dir.0, &[], &[("HARK_CONFIG", "bad.toml")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("HARK_CONFIG: bad.toml line 2: limits.idle_timeout_s (HARK_IDLE_TIMEOUT_S)"),
        "{err}"
    );

    let (code, err) = serve(&dir.0, &["--config", "missing.toml"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--config: missing.toml"), "{err}");
}

#[test]
fn hark_toml_in_the_working_directory_is_read_and_the_environment_wins() {
    let dir = TempDir::new("default");
    dir.write("hark.toml", "\n[agent]\nkind = \"gpt\"\n");
    let (code, err) = serve(&dir.0, &[], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("HARK_AGENT (agent.kind): unknown agent \"gpt\"")
            && err.contains("(hark.toml line 3)"),
        "{err}"
    );
    // The variable wins over the file's bad value: the error is now the realtime agent's
    // missing key, checked before listening like every other setting.
    let (code, err) = serve(&dir.0, &[], &[("HARK_AGENT", "realtime")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("OPENAI_API_KEY (openai.api_key): required"),
        "{err}"
    );
}
