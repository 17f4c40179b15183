//! TLS to PostgreSQL: a server that accepts TLS only, both connections encrypted, in each
//! mode (`require`, `verify_ca`, `verify_full`), and certificates refused when they must be.

use std::time::Duration;

use danube_connect_testkit::postgres::{Postgres, PostgresOptions};
use danube_dev_broker::EmbeddedBroker;

use crate::common::{startup_error, stop_cleanly, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_streams_over_tls_and_plain_tcp_is_refused() {
    let pg = Postgres::start_tls().expect("postgres with TLS");
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let env = Env { pg, broker };
    env.pg.psql("CREATE TABLE secure (id int PRIMARY KEY, name text)").unwrap();
    let ca = env.pg.ca_cert().display().to_string();
    // verify_full checks the host name: connect by the name on the certificate.
    let url = format!("postgres://postgres@localhost:{}/postgres", env.pg.port());
    let mut process = env
        .spawn(&[
            ("POSTGRES_CDC_URL", &url),
            ("POSTGRES_CDC_TLS", "verify_full"),
            ("POSTGRES_CDC_TLS_CA", &ca),
            ("POSTGRES_CDC_SNAPSHOT", "never"),
        ])
        .await;
    env.wait_streaming("danube_cdc", &process).await;
    env.pg.psql("INSERT INTO secure VALUES (1, 'x')").unwrap();
    let got = env.broker.wait_for_messages("/default/public-secure", 1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1, "{}", process.log());
    let encrypted = env
        .pg
        .psql("SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE ssl AND application_name = 'danube-postgres-cdc'")
        .unwrap();
    assert!(encrypted.parse::<u32>().unwrap() >= 2, "query and replication connections use TLS: {encrypted}");
    stop_cleanly(&mut process).await;

    // Without TLS the server refuses the connection and startup fails, saying why.
    let mut plain = danube_connect_testkit::process::ConnectorProcess::spawn(
        std::path::Path::new(crate::common::BIN),
        &env.connector_env(&[("CONNECTOR_NAME", "plain")]),
    )
    .expect("spawn");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while plain.try_wait().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "plain connection must fail: {}", plain.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(plain.log().contains("no pg_hba.conf entry"), "{}", plain.log());
}

/// How many of the connector's connections are encrypted (`pg_stat_ssl`).
fn encrypted_connections(env: &Env) -> u32 {
    env.pg
        .psql("SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE ssl AND application_name = 'danube-postgres-cdc'")
        .expect("pg_stat_ssl")
        .parse()
        .expect("a count")
}

/// Streams one row on `table` with the connector set up by `extra`, checking both of its
/// connections are encrypted, then stops it.
async fn streams_one_row_over_tls(env: &Env, table: &str, extra: &[(&str, &str)]) {
    env.pg.psql(&format!("CREATE TABLE {table} (id int PRIMARY KEY)")).unwrap();
    let slot = format!("{table}_slot");
    let tables = format!("[\"public.{table}\"]");
    let mut all = extra.to_vec();
    all.extend([
        ("POSTGRES_CDC_SLOT", slot.as_str()),
        ("POSTGRES_CDC_PUBLICATION", slot.as_str()),
        ("POSTGRES_CDC_TABLES", tables.as_str()),
        ("POSTGRES_CDC_SNAPSHOT", "never"),
    ]);
    let mut process = env.spawn(&all).await;
    env.wait_streaming(&slot, &process).await;
    env.pg.psql(&format!("INSERT INTO {table} VALUES (7)")).unwrap();
    let topic = format!("/default/public-{table}");
    let got = env.broker.wait_for_messages(&topic, 1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1, "{}", process.log());
    assert!(encrypted_connections(env) >= 2, "query and replication connections use TLS");
    stop_cleanly(&mut process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_encrypts_without_checking_the_certificate() {
    let pg = Postgres::start_tls().expect("postgres with TLS");
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let env = Env { pg, broker };
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", env.pg.port());
    // The test CA is not a web root: a checking client refuses the certificate...
    let log = startup_error(&env, &[("POSTGRES_CDC_URL", &url), ("POSTGRES_CDC_TLS", "verify_ca")]).await;
    assert!(log.contains("UnknownIssuer"), "{log}");
    // ...`require` connects anyway, encrypted.
    streams_one_row_over_tls(&env, "req", &[("POSTGRES_CDC_URL", &url), ("POSTGRES_CDC_TLS", "require")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ca_accepts_the_given_ca_and_refuses_a_certificate_of_another_ca() {
    let pg = Postgres::start_tls().expect("postgres with TLS");
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let env = Env { pg, broker };
    let ca = env.pg.ca_cert().display().to_string();
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", env.pg.port());

    let verify_ca =
        [("POSTGRES_CDC_URL", url.as_str()), ("POSTGRES_CDC_TLS", "verify_ca"), ("POSTGRES_CDC_TLS_CA", &ca)];
    streams_one_row_over_tls(&env, "ca", &verify_ca).await;

    // A certificate the given CA did not sign is refused, at once and saying so.
    let foreign = env.pg.foreign_ca().expect("another CA").display().to_string();
    let started = std::time::Instant::now();
    let log = startup_error(
        &env,
        &[("POSTGRES_CDC_URL", &url), ("POSTGRES_CDC_TLS", "verify_ca"), ("POSTGRES_CDC_TLS_CA", &foreign)],
    )
    .await;
    assert!(log.contains("invalid peer certificate: UnknownIssuer"), "{log}");
    assert!(!log.contains("postgres not reachable yet"), "a refused certificate is not retried: {log}");
    assert!(started.elapsed() < Duration::from_secs(30), "refused without startup retries: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ca_accepts_a_certificate_that_does_not_name_the_host() {
    // The certificate names neither 127.0.0.1 nor localhost.
    let options = PostgresOptions { tls: true, tls_names: vec!["DNS:db.danube.invalid".into()], ..Default::default() };
    let pg = Postgres::start_with_options(&options).expect("postgres with TLS");
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let env = Env { pg, broker };
    let ca = env.pg.ca_cert().display().to_string();

    // verify_full checks the name, and it does not match.
    let by_name = format!("postgres://postgres@localhost:{}/postgres", env.pg.port());
    let log = startup_error(
        &env,
        &[("POSTGRES_CDC_URL", &by_name), ("POSTGRES_CDC_TLS", "verify_full"), ("POSTGRES_CDC_TLS_CA", &ca)],
    )
    .await;
    assert!(log.contains("certificate not valid for name \"localhost\""), "{log}");

    // verify_ca checks the chain only: both connections are accepted.
    let by_ip = format!("postgres://postgres@127.0.0.1:{}/postgres", env.pg.port());
    let verify_ca =
        [("POSTGRES_CDC_URL", by_ip.as_str()), ("POSTGRES_CDC_TLS", "verify_ca"), ("POSTGRES_CDC_TLS_CA", &ca)];
    streams_one_row_over_tls(&env, "mismatch", &verify_ca).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_form_of_connector_tls_verifies_like_the_old_string_form() {
    let pg = Postgres::start_tls().expect("postgres with TLS");
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let env = Env { pg, broker };
    let ca = env.pg.ca_cert().display().to_string();
    let url = format!("postgres://postgres@localhost:{}/postgres", env.pg.port());
    // `connector.tls = { mode, ca }`, set field by field from the environment.
    let table =
        [("POSTGRES_CDC_URL", url.as_str()), ("POSTGRES_CDC_TLS__MODE", "verify_full"), ("POSTGRES_CDC_TLS__CA", &ca)];
    streams_one_row_over_tls(&env, "table_form", &table).await;

    // The same table checks: a CA that did not sign the server certificate is refused.
    let foreign = env.pg.foreign_ca().expect("another CA").display().to_string();
    let log = startup_error(
        &env,
        &[("POSTGRES_CDC_URL", &url), ("POSTGRES_CDC_TLS__MODE", "verify_full"), ("POSTGRES_CDC_TLS__CA", &foreign)],
    )
    .await;
    assert!(log.contains("invalid peer certificate: UnknownIssuer"), "{log}");
    // And the old spelling of the CA beside the new one is refused, naming the field.
    let log = startup_error(
        &env,
        &[
            ("POSTGRES_CDC_URL", &url),
            ("POSTGRES_CDC_TLS__MODE", "verify_full"),
            ("POSTGRES_CDC_TLS__CA", &ca),
            ("POSTGRES_CDC_TLS_CA", &ca),
        ],
    )
    .await;
    assert!(log.contains("connector.tls.ca") && log.contains("connector.tls_ca"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_authenticates_both_connections() {
    // Role `cdc` must present a certificate of the test CA naming it.
    let options = PostgresOptions { tls: true, cert_user: Some("cdc".into()), ..Default::default() };
    let pg = Postgres::start_with_options(&options).expect("postgres requiring client certificates");
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let env = Env { pg, broker };
    let ca = env.pg.ca_cert().display().to_string();
    let (cert, key) = env.pg.client_cert("cdc").expect("client certificate");
    let url = format!("postgres://cdc@localhost:{}/postgres", env.pg.port());

    // Without a client certificate the server refuses the connection, and the start fails.
    let log = startup_error(
        &env,
        &[("POSTGRES_CDC_URL", &url), ("POSTGRES_CDC_TLS", "verify_full"), ("POSTGRES_CDC_TLS_CA", &ca)],
    )
    .await;
    assert!(log.contains("certificate"), "{log}");

    // With one (the table form, inline), the query and the replication connection get in,
    // each authenticated by the certificate.
    let tls = format!(
        "{{ mode = \"verify_full\", ca = \"{ca}\", client_cert = \"{}\", client_key = \"{}\" }}",
        cert.display(),
        key.display()
    );
    env.pg.psql("CREATE TABLE mtls (id int PRIMARY KEY)").unwrap();
    let mut process =
        env.spawn(&[("POSTGRES_CDC_URL", &url), ("POSTGRES_CDC_TLS", &tls), ("POSTGRES_CDC_SNAPSHOT", "never")]).await;
    env.wait_streaming("danube_cdc", &process).await;
    env.pg.psql("INSERT INTO mtls VALUES (7)").unwrap();
    let got = env.broker.wait_for_messages("/default/public-mtls", 1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1, "{}", process.log());
    let by_certificate = env
        .pg
        .psql(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE ssl AND client_dn LIKE '%CN=cdc%' AND application_name = 'danube-postgres-cdc'",
        )
        .expect("pg_stat_ssl");
    assert!(by_certificate.parse::<u32>().expect("a count") >= 2, "both connections present the certificate");
    stop_cleanly(&mut process).await;
}

/// Runs the connector with `--check` and `env`: its exit code and output.
fn check(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = std::process::Command::new(crate::common::BIN)
        .arg("--check")
        .envs(env.iter().copied())
        .output()
        .expect("run --check");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

#[test]
fn check_refuses_tls_settings_the_clients_cannot_honour_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("certificate");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, made.cert.pem()).expect("write");
    let ca = ca.display().to_string();

    // Both environment spellings of the Danube CA are `danube.tls.ca`, read at `--check`.
    for var in ["DANUBE_TLS__CA", "DANUBE_TLS_CA"] {
        let (code, out) = check(&[(var, "/nonexistent/danube-ca.pem")]);
        assert_eq!(code, Some(1), "{var}: {out}");
        assert!(out.contains("danube.tls.ca") && out.contains("/nonexistent/danube-ca.pem"), "{var}: {out}");
    }
    let (code, out) = check(&[("DANUBE_TLS__CA", &ca)]);
    assert_eq!(code, Some(0), "a readable CA passes: {out}");
    assert!(out.contains("[danube.tls]"), "the effective config prints the new spelling: {out}");

    // The Danube client cannot add the built-in roots to a CA; pgwire-replication neither.
    let (code, out) = check(&[("DANUBE_TLS__CA", &ca), ("DANUBE_TLS__BUILTIN_ROOTS", "true")]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("danube.tls.builtin_roots"), "{out}");
    let tls = format!("{{ mode = \"verify_full\", ca = \"{ca}\", builtin_roots = true }}");
    let (code, out) = check(&[("POSTGRES_CDC_TLS", &tls)]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("connector.tls.builtin_roots") && out.contains("pgwire-replication"), "{out}");
}
