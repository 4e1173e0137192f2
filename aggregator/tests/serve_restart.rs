//! A stopped aggregator frees its ports at once, so that a restart (systemd, the demo's
//! outage) binds the same addresses again, with TLS and without.

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_frees_its_ports_for_a_restart() {
    for tls in [true, false] {
        let server = TestServer::start(Options {
            tls,
            ..Default::default()
        })
        .await;
        let (grpc, http) = (server.grpc, server.http);
        server.stop().await;
        let rebound = tokio::net::TcpListener::bind(grpc).await;
        assert!(rebound.is_ok(), "tls {tls}: gRPC port {grpc}: {rebound:?}");
        let rebound = tokio::net::TcpListener::bind(http).await;
        assert!(rebound.is_ok(), "tls {tls}: HTTP port {http}: {rebound:?}");
    }
}
