//! The PostgreSQL test harness (`tests/pg`) itself: each [`pg::fresh_database`] is a new, empty
//! database on a real server, and tests running in parallel threads of one process (each with
//! its own runtime, racing to start the private cluster) all get one.
//!
//! Without a PostgreSQL server these tests fail, unless `HARK_SKIP_POSTGRES_TESTS=1` (then they
//! say so loudly and pass). `HARK_TEST_POSTGRES_URL` points them at a running server instead
//! of a private cluster.

mod pg;

use std::sync::{Arc, Barrier};

use sqlx::{Connection, PgConnection};

/// The number of tables, views and sequences outside PostgreSQL's own schemas.
async fn user_relations(conn: &mut PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
           AND n.nspname NOT LIKE 'pg_toast%' AND c.relkind IN ('r', 'v', 'S', 'p', 'm')",
    )
    .fetch_one(conn)
    .await
    .expect("counting relations")
}

/// Connects to `url` and checks it is the database named in it, empty, and writable.
async fn check_fresh(url: &str) -> PgConnection {
    let mut conn = PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(
        url.contains(&format!("/{name}")),
        "{url} is connected to database {name}"
    );
    assert!(name.starts_with("hark_t_"), "{name}");
    assert_eq!(user_relations(&mut conn).await, 0, "{url} is not empty");
    conn
}

#[tokio::test]
async fn fresh_databases_are_distinct_and_empty() {
    let Some(a) = pg::fresh_database().await else {
        return;
    };
    let Some(b) = pg::fresh_database().await else {
        return;
    };
    eprintln!("databases: {a}\n           {b}");
    assert_ne!(a, b);

    let mut conn_a = check_fresh(&a).await;
    let version: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&mut conn_a)
        .await
        .unwrap();
    eprintln!("server: {version}");
    assert!(version.starts_with("PostgreSQL "), "{version}");

    // A table made in one is not in the other.
    sqlx::raw_sql(
        "CREATE TABLE only_in_a (id BIGINT PRIMARY KEY); INSERT INTO only_in_a VALUES (1)",
    )
    .execute(&mut conn_a)
    .await
    .unwrap();
    assert_eq!(user_relations(&mut conn_a).await, 1);
    let conn_b = check_fresh(&b).await;
    conn_a.close().await.unwrap();
    conn_b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_in_one_runtime() {
    let (a, b) = tokio::join!(pg::fresh_database(), pg::fresh_database());
    let (Some(a), Some(b)) = (a, b) else { return };
    assert_ne!(a, b);
    let (ca, cb) = tokio::join!(check_fresh(&a), check_fresh(&b));
    ca.close().await.unwrap();
    cb.close().await.unwrap();
}

/// Like parallel tests: threads with a runtime each, released together (the first calls race
/// to start the private cluster when no other test of this process has yet).
#[test]
fn concurrent_calls_from_parallel_threads() {
    const THREADS: usize = 4;
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                barrier.wait();
                rt.block_on(async {
                    let url = pg::fresh_database().await?;
                    check_fresh(&url).await.close().await.unwrap();
                    Some(url)
                })
            })
        })
        .collect();
    let urls: Vec<Option<String>> = threads
        .into_iter()
        .map(|t| {
            t.join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
        .collect();
    if urls.iter().any(Option::is_none) {
        return; // skipped (HARK_SKIP_POSTGRES_TESTS=1), loudly
    }
    let mut distinct: Vec<String> = urls.into_iter().flatten().collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), THREADS, "{distinct:?}");
}
