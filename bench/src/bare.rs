//! The transport ceiling: a bare tonic server with the aggregator's mTLS, answering every
//! report `ACCEPTED` without verifying, decoding or storing anything. The same load generator
//! against it shows what gRPC, HTTP/2 and TLS alone cost on this machine.

use std::path::PathBuf;

use duban_proto::pb;
use duban_proto::pb::report_service_server::{ReportService, ReportServiceServer};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

#[derive(Debug, clap::Args)]
pub struct BareArgs {
    /// Directory written by `duban-aggregator dev-ca` (ca.crt, server.crt, server.key).
    #[arg(long)]
    pub certs: PathBuf,
}

struct Bare;

fn accepted() -> pb::SubmitResult {
    pb::SubmitResult {
        outcome: pb::Outcome::Accepted as i32,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl ReportService for Bare {
    async fn submit(
        &self,
        _: Request<pb::SignedReport>,
    ) -> Result<Response<pb::SubmitResult>, Status> {
        Ok(Response::new(accepted()))
    }
    async fn submit_batch(
        &self,
        request: Request<pb::SubmitBatchRequest>,
    ) -> Result<Response<pb::SubmitBatchResponse>, Status> {
        let results = request
            .into_inner()
            .reports
            .iter()
            .map(|_| accepted())
            .collect();
        Ok(Response::new(pb::SubmitBatchResponse { results }))
    }
    async fn hello(
        &self,
        _: Request<pb::SignedReport>,
    ) -> Result<Response<pb::HelloResult>, Status> {
        Err(Status::unimplemented("bare server"))
    }
    async fn respond(
        &self,
        _: Request<pb::SignedReport>,
    ) -> Result<Response<pb::SubmitResult>, Status> {
        Err(Status::unimplemented("bare server"))
    }
    async fn open_alerts(
        &self,
        _: Request<pb::SignedReport>,
    ) -> Result<Response<pb::AlertList>, Status> {
        Err(Status::unimplemented("bare server"))
    }
}

pub async fn serve(args: BareArgs) -> anyhow::Result<()> {
    let read = |name: &str| std::fs::read(args.certs.join(name));
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(read("server.crt")?, read("server.key")?))
        .client_ca_root(Certificate::from_pem(read("ca.crt")?));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    eprintln!("bare server serving grpc={}", listener.local_addr()?);
    Server::builder()
        .tls_config(tls)?
        .add_service(ReportServiceServer::new(Bare))
        .serve_with_incoming(TcpListenerStream::new(listener))
        .await?;
    Ok(())
}
