//! A real PostgreSQL for the tests: one fresh, empty database per call of [`fresh_database`].
//!
//! Include it with `mod pg;` in a test file.
//!
//! Where the server comes from, in order:
//!
//! 1. `HARK_TEST_POSTGRES_URL`, when set and not empty: the admin URL of a running server (sqlx
//!    form, e.g. `postgres://postgres:secret@127.0.0.1:5432/postgres`; its user may
//!    `CREATE DATABASE`). Each call creates a new database `hark_t_<pid>_<n>` there and returns
//!    the same URL with that database. They are not dropped afterwards: a throwaway server is
//!    expected. A server that cannot be reached or refuses `CREATE DATABASE` is a failure
//!    (a panic), whatever `HARK_SKIP_POSTGRES_TESTS` says: it was asked for by name.
//! 2. Otherwise a private cluster, started once per test process by the first call and shared
//!    by every test of the process (each test still gets its own database). `initdb` and
//!    `postgres` are looked up on `PATH` (both in one directory), then under
//!    `/usr/lib/postgresql/<version>/bin` (highest version; Debian's `postgresql` package).
//!    The cluster lives in `/tmp/hark-pg-<pid>-<nanos>/` (`data/`, `sock/`, the logs
//!    `initdb.log` and `log`), runs with trust authentication for the user `hark`, `fsync=off`,
//!    `max_connections=200`, and listens only on a Unix socket in `sock/`
//!    (`listen_addresses=''`: no TCP port to collide with; the port number 5432 only names the
//!    socket file). PostgreSQL refuses to run as root: when the
//!    effective uid is 0, `initdb` and `postgres` run as the user `postgres` (created by
//!    Debian's package), else `nobody`, through `runuser -u <user> --`.
//!
//!    `initdb` and the server run under a small `bash` watcher whose stdin is a pipe held open
//!    by this process only (its write end is close-on-exec, and the watcher has its own process
//!    group, so a Ctrl-C reaches it only through the pipe). When the test process ends, however
//!    it ends (even `kill -9`), the pipe closes; the watcher then stops PostgreSQL (`SIGINT`, a
//!    fast shutdown), waits for it (and for an `initdb` still running) and removes the
//!    cluster's directory. Starting takes about a second, nearly all of it `initdb`.
//!
//! When no PostgreSQL can be found or the private cluster does not start, [`fresh_database`]
//! panics with the reason (and the server's log), unless `HARK_SKIP_POSTGRES_TESTS=1`: then it
//! prints a loud banner to stderr and returns `None`, and the caller's test returns early.
//! `.ci/run` installs PostgreSQL and never sets `HARK_SKIP_POSTGRES_TESTS`.
#![allow(dead_code)] // each test binary uses a part

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlx::{Connection, PgConnection};

/// The admin URL of a running server to use instead of a private cluster.
pub const URL_ENV: &str = "HARK_TEST_POSTGRES_URL";
/// `1`: skip (loudly) instead of failing when no PostgreSQL can be found or started.
pub const SKIP_ENV: &str = "HARK_SKIP_POSTGRES_TESTS";

/// The private cluster's superuser (trust authentication, no password).
const USER: &str = "hark";
/// Names the socket file `sock/.s.PGSQL.5432`; nothing listens on TCP.
const PORT: u16 = 5432;
/// How long the private cluster may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long `initdb` may take (about a second; slow disks and busy machines vary).
const INITDB_TIMEOUT: Duration = Duration::from_secs(120);

/// Numbers the databases this process creates.
static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

/// The private cluster of this test process, or why it could not start (kept, so every test
/// reports the same reason without trying again).
static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// A running private cluster. Never dropped: it lives as long as the process, and the watcher
/// stops the server when the process is gone.
struct Cluster {
    /// `postgres://hark@localhost/postgres?host=<sock dir>&port=5432`.
    admin_url: String,
    /// `/tmp/hark-pg-<pid>-<nanos>`.
    dir: PathBuf,
    /// The `bash` watcher (parent of `initdb` and the server).
    _watcher: Child,
    /// The write end of the watcher's stdin: closed only by this process's exit.
    _lifeline: ChildStdin,
}

/// A fresh empty database on a real PostgreSQL for one test; its URL (sqlx form, e.g.
/// `postgres://hark@localhost/hark_t_<pid>_<n>?host=/tmp/hark-pg-…/sock&port=5432`, or
/// `HARK_TEST_POSTGRES_URL` with its database replaced).
///
/// Safe to call from any runtime and from many tests at once (the first call starts the
/// private cluster; the others wait for it). Panics with a clear message when no PostgreSQL
/// can be found or started, unless `HARK_SKIP_POSTGRES_TESTS=1`, in which case it prints
/// loudly to stderr and returns `None`. Panics when the server refuses `CREATE DATABASE`.
pub async fn fresh_database() -> Option<String> {
    let admin = admin_url().await?;
    let mut conn = connect_admin(&admin).await;
    loop {
        let n = NEXT_DB.fetch_add(1, Ordering::Relaxed);
        let name = format!("hark_t_{}_{n}", std::process::id());
        let sql = format!("CREATE DATABASE \"{name}\"");
        match sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
        {
            Ok(_) => {
                let _ = conn.close().await;
                return Some(with_database(&admin, &name));
            }
            // Left over by an earlier process with the same pid (an external server): next.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => continue,
            Err(e) => panic!("CREATE DATABASE {name} on {}: {e}", redact(&admin)),
        }
    }
}

/// The admin URL of the server [`fresh_database`] uses (database `postgres` on the private
/// cluster; `HARK_TEST_POSTGRES_URL` as given), starting the private cluster when needed.
///
/// Connecting to it as admin and creating or dropping things there is shared with every other
/// test of the process: prefer [`fresh_database`]. Same `None` and panic rules as it.
pub async fn admin_url() -> Option<String> {
    if let Ok(url) = std::env::var(URL_ENV)
        && !url.is_empty()
    {
        return Some(url);
    }
    let started = tokio::task::spawn_blocking(|| cluster().map(|c| c.admin_url.clone()))
        .await
        .expect("starting the private PostgreSQL cluster panicked");
    match started {
        Ok(url) => Some(url),
        Err(why) => skip_or_panic(&why),
    }
}

/// The private cluster's directory (`data/`, `sock/`, logs), when this process started one.
pub fn cluster_dir() -> Option<PathBuf> {
    CLUSTER.get()?.as_ref().ok().map(|c| c.dir.clone())
}

/// Without `HARK_SKIP_POSTGRES_TESTS=1`: panics with `why`. With it: the loud banner, `None`.
fn skip_or_panic(why: &str) -> Option<String> {
    if std::env::var(SKIP_ENV).as_deref() == Ok("1") {
        // Straight to the process's stderr: the test harness captures `eprintln!` of tests
        // that pass, and a skip must be seen.
        let banner = format!(
            "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             !! SKIPPED: a PostgreSQL test (HARK_SKIP_POSTGRES_TESTS=1).            !!\n\
             !! No PostgreSQL could be found or started. Nothing was checked.       !!\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             reason: {why}\n"
        );
        let _ = std::io::stderr().write_all(banner.as_bytes());
        return None;
    }
    panic!(
        "the PostgreSQL tests need a real PostgreSQL: {why}\n\
         Install the server (Debian: `apt-get install -y postgresql`; `.ci/run` does), or set \
         {URL_ENV} to the admin URL of a running server; {SKIP_ENV}=1 skips these tests, loudly."
    );
}

/// An admin connection; on the private cluster, retried for a few seconds (a server that has
/// just said "ready" may still refuse for a moment). Panics with the last error.
async fn connect_admin(admin: &str) -> PgConnection {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match PgConnection::connect(admin).await {
            Ok(conn) => return conn,
            Err(_) if std::env::var(URL_ENV).is_err() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("connecting to PostgreSQL at {}: {e}", redact(admin)),
        }
    }
}

/// `url` with its database (the path) replaced by `name`, the query string kept.
fn with_database(url: &str, name: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[after_scheme..]
        .find(['/', '?'])
        .map_or(url.len(), |i| after_scheme + i);
    let query = url[authority_end..]
        .find('?')
        .map_or("", |i| &url[authority_end + i..]);
    format!("{}/{name}{query}", &url[..authority_end])
}

/// `url` without its password, for messages.
fn redact(url: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[after_scheme..]
        .find(['/', '?'])
        .map_or(url.len(), |i| after_scheme + i);
    let authority = &url[after_scheme..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &url[..after_scheme],
            &authority[..colon],
            &url[after_scheme + at..]
        ),
        _ => url.to_string(),
    }
}

/// The process's private cluster, started on first use (blocking; call off the runtime).
fn cluster() -> Result<&'static Cluster, String> {
    CLUSTER
        .get_or_init(start_cluster)
        .as_ref()
        .map_err(String::clone)
}

/// `initdb` and the server, both under a watcher that removes the directory whatever
/// happens; waits until the server is ready.
fn start_cluster() -> Result<Cluster, String> {
    let began = Instant::now();
    let bin = find_bin_dir().ok_or_else(|| {
        "no PostgreSQL server binaries: `initdb` and `postgres` are neither on PATH nor under \
         /usr/lib/postgresql/*/bin"
            .to_string()
    })?;
    let run_as = if effective_uid()? == 0 {
        Some(unprivileged_user()?)
    } else {
        None
    };
    let dir = make_cluster_dir(run_as.as_ref())?;
    let (initdb, server) = commands(run_as.as_ref(), &bin, &dir);
    let spawned = Command::new("bash")
        .args(["-c", WATCHER, "hark-pg-watcher"])
        .arg(&dir)
        .arg(initdb.len().to_string())
        .args(&initdb)
        .args(&server)
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: a Ctrl-C of the tests reaches it only as the lifeline's end.
        .process_group(0)
        .spawn();
    let mut watcher = match spawned {
        Ok(watcher) => watcher,
        Err(e) => {
            let _ = fs::remove_dir_all(&dir);
            return Err(format!("starting bash (the PostgreSQL watcher): {e}"));
        }
    };
    // Returning early drops the lifeline: the watcher then stops everything and removes `dir`.
    let mut lifeline = watcher
        .stdin
        .take()
        .ok_or("the watcher has no stdin pipe")?;
    let fail = |what: String, log: &str, command: &[String]| {
        let log = fs::read_to_string(dir.join(log)).unwrap_or_default();
        format!("{what}; command: {}\nits output:\n{log}", command.join(" "))
    };
    let status = wait_for_file(&dir.join("initdb.status"), INITDB_TIMEOUT)
        .map_err(|why| fail(format!("initdb {why}"), "initdb.log", &initdb))?;
    if status != "0" {
        let what = format!("initdb failed (exit status {status})");
        return Err(fail(what, "initdb.log", &initdb));
    }
    let initdb_took = began.elapsed();
    lifeline
        .write_all(b"start\n")
        .map_err(|e| format!("telling the PostgreSQL watcher to start the server: {e}"))?;
    if let Err(why) = wait_ready(&dir) {
        let why = fail(why, "log", &server);
        drop(lifeline);
        let _ = watcher.wait();
        return Err(why);
    }
    eprintln!(
        "pg: private PostgreSQL cluster in {} ready after {:.2} s (initdb {:.2} s), as {}",
        dir.display(),
        began.elapsed().as_secs_f64(),
        initdb_took.as_secs_f64(),
        run_as.as_ref().map_or("this user", |u| u.name.as_str())
    );
    let sock = dir.join("sock");
    let admin_url = format!(
        "postgres://{USER}@localhost/postgres?host={}&port={PORT}",
        sock.display()
    );
    Ok(Cluster {
        admin_url,
        dir,
        _watcher: watcher,
        _lifeline: lifeline,
    })
}

/// The `initdb` and server commands for the cluster in `dir`, each through
/// `runuser -u <user> --` when `run_as` is given.
fn commands(run_as: Option<&RunAs>, bin: &Path, dir: &Path) -> (Vec<String>, Vec<String>) {
    let data = dir.join("data").display().to_string();
    let sock = dir.join("sock").display().to_string();
    let mut prefix = vec![];
    if let Some(user) = run_as {
        prefix.extend(["runuser", "-u", &user.name, "--"].map(String::from));
    }
    let mut initdb = prefix.clone();
    initdb.push(bin.join("initdb").display().to_string());
    // Trust authentication for `hark`, UTF-8, the C locale (whatever locales the machine has).
    for arg in ["-D", &data, "-U", USER, "--auth=trust", "-E", "UTF8"] {
        initdb.push(arg.to_string());
    }
    initdb.extend(["--locale=C", "--no-sync"].map(String::from));
    let mut server = prefix;
    server.push(bin.join("postgres").display().to_string());
    for arg in ["-D", &data, "-k", &sock, "-p", &PORT.to_string()] {
        server.push(arg.to_string());
    }
    for setting in ["listen_addresses=", "fsync=off", "max_connections=200"] {
        server.extend(["-c".to_string(), setting.to_string()]);
    }
    (initdb, server)
}

/// The watcher (bash): `$1` the cluster dir, `$2` the number n of words of the `initdb`
/// command, then that command (n words), then the server's command. Runs `initdb` at once
/// (output to `$1/initdb.log`, exit status to `$1/initdb.status`). On a `start` line on stdin
/// (sent once `initdb` succeeded) it runs the server (output to `$1/log`, exit status to
/// `$1/exited`), waits for EOF on stdin (the test process's end), and stops the server by the
/// pid in `postmaster.pid` (root may signal it even when `runuser` sits between; `SIGINT` is a
/// fast shutdown). Whatever happened, it then waits for its children (an `initdb` still
/// running included) and removes the directory.
const WATCHER: &str = r#"
dir=$1; n=$2; shift 2
init=("${@:1:n}"); server=("${@:n+1}")
( "${init[@]}" >"$dir/initdb.log" 2>&1 </dev/null; echo $? >"$dir/initdb.status" ) &
if read -r go && [ "$go" = start ]; then
  ( "${server[@]}" >"$dir/log" 2>&1 </dev/null; echo $? >"$dir/exited" ) &
  cat >/dev/null
  pid=$(head -n 1 "$dir/data/postmaster.pid" 2>/dev/null)
  if [ -n "$pid" ]; then kill -INT "$pid" 2>/dev/null; fi
fi
wait
rm -rf "$dir"
"#;

/// The trimmed content of `path` once it exists and is not empty (a status the watcher
/// writes), or an error after `timeout`.
fn wait_for_file(path: &Path, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let content = fs::read_to_string(path).unwrap_or_default();
        if !content.trim().is_empty() {
            return Ok(content.trim().to_string());
        }
        if Instant::now() > deadline {
            return Err(format!("did not finish within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls until `postmaster.pid` says `ready` and the socket exists, the server exits, or
/// [`START_TIMEOUT`] passes.
fn wait_ready(dir: &Path) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    let socket = dir.join("sock").join(format!(".s.PGSQL.{PORT}"));
    loop {
        if let Ok(status) = fs::read_to_string(dir.join("exited")) {
            return Err(format!(
                "PostgreSQL exited during startup (status {})",
                status.trim()
            ));
        }
        let pid_file =
            fs::read_to_string(dir.join("data").join("postmaster.pid")).unwrap_or_default();
        // Line 8 of postmaster.pid is the server's state: `starting`, then `ready`.
        if pid_file.lines().nth(7).map(str::trim) == Some("ready") && socket.exists() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "PostgreSQL did not accept connections within {START_TIMEOUT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The directory holding `initdb` and `postgres`: on PATH, else the highest version under
/// `/usr/lib/postgresql/*/bin`.
fn find_bin_dir() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(path) = std::env::var_os("PATH")
        && let Some(dir) = std::env::split_paths(&path).find(|d| has_both(d))
    {
        return Some(dir);
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version = name
                .split('.')
                .map(str::parse)
                .collect::<Result<Vec<u32>, _>>()
                .ok()?;
            let bin = entry.path().join("bin");
            has_both(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// This process's effective uid (Linux: `/proc/self/status`; elsewhere `id -u`).
fn effective_uid() -> Result<u32, String> {
    let from_proc = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            line.split_whitespace().nth(2)?.parse().ok()
        });
    if let Some(uid) = from_proc {
        return Ok(uid);
    }
    let out = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| format!("running `id -u`: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|e| format!("`id -u` printed no uid: {e}"))
}

/// An unprivileged account to run PostgreSQL as.
struct RunAs {
    name: String,
    uid: u32,
    gid: u32,
}

/// `postgres` from `/etc/passwd`, else `nobody`.
fn unprivileged_user() -> Result<RunAs, String> {
    let passwd =
        fs::read_to_string("/etc/passwd").map_err(|e| format!("reading /etc/passwd: {e}"))?;
    for wanted in ["postgres", "nobody"] {
        for line in passwd.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() >= 4
                && fields[0] == wanted
                && let (Ok(uid), Ok(gid)) = (fields[2].parse(), fields[3].parse())
            {
                return Ok(RunAs {
                    name: wanted.to_string(),
                    uid,
                    gid,
                });
            }
        }
    }
    Err(
        "running as root, and neither the user `postgres` nor `nobody` exists to run \
         PostgreSQL as (it refuses to run as root)"
            .to_string(),
    )
}

/// `/tmp/hark-pg-<pid>-<nanos>` (mode 0755) with `sock/` in it, owned by `run_as` when given.
/// Under `/tmp` rather than `TMPDIR`: the unprivileged user must reach it, and the socket path
/// must stay under the ~107-byte limit.
fn make_cluster_dir(run_as: Option<&RunAs>) -> Result<PathBuf, String> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = PathBuf::from(format!("/tmp/hark-pg-{}-{nanos}", std::process::id()));
    let sock = dir.join("sock");
    let made = fs::create_dir(&dir)
        .and_then(|()| fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)))
        .and_then(|()| fs::create_dir(&sock));
    if let Err(e) = made {
        let hint = if e.kind() == ErrorKind::AlreadyExists {
            " (left over?)"
        } else {
            ""
        };
        return Err(format!("creating {}{hint}: {e}", sock.display()));
    }
    if let Some(user) = run_as {
        for d in [&dir, &sock] {
            std::os::unix::fs::chown(d, Some(user.uid), Some(user.gid))
                .map_err(|e| format!("chown {} to {}: {e}", d.display(), user.name))?;
        }
    }
    Ok(dir)
}
