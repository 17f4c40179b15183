//! TLS to PostgreSQL: a server that accepts TLS only, both connections encrypted.

use std::time::Duration;

use danube_connect_testkit::postgres::Postgres;
use danube_dev_broker::EmbeddedBroker;

use crate::common::{stop_cleanly, Env};

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
    let got = env.broker.wait_for_messages("/default/public.secure", 1, Duration::from_secs(30)).await;
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
