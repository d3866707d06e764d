//! The HTTP(S) listener: TLS (rustls) with optional client certificates,
//! limits against slow and greedy clients, graceful shutdown.
//!
//! - A TLS handshake must finish within [`Limits::handshake_timeout`], request
//!   headers arrive within [`Limits::header_timeout`] (hyper closes the
//!   connection otherwise; this also closes idle keep-alive connections), and
//!   `POST /v1/batches` reads its body within the request timeout (`api`).
//! - At most [`Limits::max_connections`] connections are served at once; the
//!   next ones wait in the kernel's accept queue, so a flood of idle
//!   connections cannot take the memory of the ones that work.

use std::future::Future;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Connection limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The most connections served at once.
    pub max_connections: usize,
    /// The longest a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// The longest the request headers may take to arrive.
    pub header_timeout: Duration,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {why}")]
pub struct TlsError {
    /// The config key whose file is at fault.
    pub key: &'static str,
    /// What is wrong.
    pub why: String,
}

fn tls_err(key: &'static str, why: impl Into<String>) -> TlsError {
    TlsError {
        key,
        why: why.into(),
    }
}

/// Builds the TLS acceptor: the server's certificate chain and key (PEM), and,
/// when `client_ca` is given, client certificates required and checked
/// against it (mutual TLS).
pub fn acceptor(
    cert_file: &Path,
    key_file: &Path,
    client_ca: Option<&Path>,
) -> Result<TlsAcceptor, TlsError> {
    let read = |key: &'static str, path: &Path| {
        std::fs::read(path).map_err(|e| tls_err(key, format!("{}: {e}", path.display())))
    };
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_reader_iter(BufReader::new(&read("tls.cert_file", cert_file)?[..]))
            .collect::<Result<_, _>>()
            .map_err(|e| tls_err("tls.cert_file", format!("{}: {e}", cert_file.display())))?;
    if certs.is_empty() {
        return Err(tls_err(
            "tls.cert_file",
            format!("{}: no certificate in it", cert_file.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&read("tls.key_file", key_file)?).map_err(|e| {
        tls_err(
            "tls.key_file",
            format!("{}: no private key: {e}", key_file.display()),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("tls", e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            let pem = read("tls.client_ca_file", ca)?;
            for cert in CertificateDer::pem_reader_iter(BufReader::new(&pem[..])) {
                let cert = cert
                    .map_err(|e| tls_err("tls.client_ca_file", format!("{}: {e}", ca.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| tls_err("tls.client_ca_file", format!("{}: {e}", ca.display())))?;
            }
            if roots.is_empty() {
                return Err(tls_err(
                    "tls.client_ca_file",
                    format!("{}: no certificate in it", ca.display()),
                ));
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| tls_err("tls.client_ca_file", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        tls_err(
            "tls.key_file",
            format!("does not match the certificate: {e}"),
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets the
/// requests in flight finish (up to 10 s).
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "Accepting a connection failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await
                    {
                        Ok(Ok(stream)) => serve_conn(stream, service, watcher, limits).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed.");
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out."),
                    }
                }
                None => serve_conn(tcp, service, watcher, limits).await,
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("Requests still in flight after 10 s; closing them.");
    }
    Ok(())
}

async fn serve_conn<IO>(
    io: IO,
    service: TowerToHyperService<axum::Router>,
    watcher: hyper_util::server::graceful::Watcher,
    limits: Limits,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 * 1024);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, "Connection ended with an error.");
    }
}
