//! Password authentication: a role that must use SCRAM-SHA-256 (`pg_hba.conf`), the password
//! given through another environment variable or a file, and a wrong password refused with
//! a message naming it.

use std::time::Duration;

use danube_connect_testkit::postgres::{Postgres, PostgresOptions};
use danube_dev_broker::EmbeddedBroker;

use crate::common::{startup_error, stop_cleanly, wait_payloads, Env};

const USER: &str = "cdc_user";
const PASSWORD: &str = "s3cret-Pa55";

/// A cluster where `cdc_user` must authenticate with SCRAM-SHA-256, owning table `accounts`.
async fn scram_env() -> Env {
    let options = PostgresOptions {
        settings: vec![("log_connections".into(), "on".into())],
        scram_user: Some((USER.into(), PASSWORD.into())),
        ..Default::default()
    };
    let pg = Postgres::start_with_options(&options).expect("postgres with scram-sha-256");
    pg.psql(&format!(
        "CREATE TABLE accounts (id int PRIMARY KEY, name text); ALTER TABLE accounts OWNER TO {USER}; \
         GRANT CREATE ON DATABASE postgres TO {USER}"
    ))
    .expect("schema");
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    Env { pg, broker }
}

/// A file removed when the test ends.
struct RemovedOnDrop(std::path::PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn user_url(env: &Env) -> String {
    format!("postgres://{USER}@127.0.0.1:{}/postgres", env.pg.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_password_from_env_and_from_file_snapshots_and_streams() {
    let env = scram_env().await;
    env.pg.psql("INSERT INTO accounts VALUES (1, 'before start')").unwrap();
    let url = user_url(&env);
    let common = [
        ("POSTGRES_CDC_URL", url.as_str()),
        ("POSTGRES_CDC_TABLES", "[\"public.accounts\"]"),
        ("POSTGRES_CDC_PUBLICATION", "accounts_pub"),
    ];

    // The password from another environment variable.
    let mut extra = common.to_vec();
    extra.extend([("POSTGRES_CDC_PASSWORD", "{env=\"CDC_TEST_PG_PASSWORD\"}"), ("CDC_TEST_PG_PASSWORD", PASSWORD)]);
    let mut process = env.spawn(&extra).await;
    env.wait_streaming("danube_cdc", &process).await;
    env.pg.psql("INSERT INTO accounts VALUES (2, 'streamed')").unwrap();
    let got = wait_payloads(&env, "/default/public-accounts", 2, Duration::from_secs(30)).await;
    let rows: Vec<(&str, i64)> =
        got.iter().map(|p| (p["op"].as_str().unwrap_or(""), p["after"]["id"].as_i64().unwrap_or(-1))).collect();
    assert_eq!(rows, [("READ", 1), ("INSERT", 2)], "{}", process.log());
    stop_cleanly(&mut process).await;

    // Both connections (queries and replication) authenticated with SCRAM as cdc_user.
    let log = env.pg.log();
    let scram = log.lines().filter(|l| l.contains(&format!("identity=\"{USER}\" method=scram-sha-256"))).count();
    assert!(scram >= 2, "query and replication connections use scram-sha-256: {log}");
    assert!(log.contains(&format!("replication connection authorized: user={USER}")), "{log}");

    // The password from a file (trailing newline trimmed); the slot resumes where it was.
    let file = RemovedOnDrop(std::env::temp_dir().join(format!("cdc-pg-password-{}", std::process::id())));
    std::fs::write(&file.0, format!("{PASSWORD}\n")).unwrap();
    let secret = format!("{{file=\"{}\"}}", file.0.display());
    let mut extra = common.to_vec();
    extra.push(("POSTGRES_CDC_PASSWORD", &secret));
    let mut process = env.spawn(&extra).await;
    env.wait_streaming("danube_cdc", &process).await;
    env.pg.psql("INSERT INTO accounts VALUES (3, 'after restart')").unwrap();
    let got = wait_payloads(&env, "/default/public-accounts", 3, Duration::from_secs(30)).await;
    let ids: Vec<i64> = got.iter().map(|p| p["after"]["id"].as_i64().unwrap_or(-1)).collect();
    assert_eq!(ids, [1, 2, 3], "no duplicate, nothing missing: {}", process.log());
    stop_cleanly(&mut process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_scram_password_is_refused_naming_the_problem() {
    let env = scram_env().await;
    let url = user_url(&env);
    let wrong = [
        ("POSTGRES_CDC_URL", url.as_str()),
        ("POSTGRES_CDC_TABLES", "[\"public.accounts\"]"),
        ("POSTGRES_CDC_PASSWORD", "not-the-password"),
    ];
    let log = startup_error(&env, &wrong).await;
    assert!(log.contains(&format!("password authentication failed for user \"{USER}\"")), "{log}");
    assert!(!log.contains("not-the-password"), "the password is not logged: {log}");

    let missing = [("POSTGRES_CDC_URL", url.as_str()), ("POSTGRES_CDC_TABLES", "[\"public.accounts\"]")];
    let log = startup_error(&env, &missing).await;
    assert!(log.contains("password missing"), "{log}");

    // Nothing was created with the refused credentials.
    assert_eq!(env.pg.psql("SELECT count(*) FROM pg_replication_slots").unwrap(), "0");
}
