//! The in-memory adapter: the whole connection task over a `tokio::io::duplex` pipe, for the
//! c2s fuzzer (fuzz/fuzz_targets/c2s.rs) and tests. The same [`StreamTransport`] as TCP.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::DuplexStream;

use super::tcp::StreamTransport;
use super::{C2sContext, engine};
use crate::io::Io;

/// Runs the whole connection task over an in-memory pipe (`tokio::io::duplex`), as if `peer`
/// had connected to a STARTTLS listener that has no TLS: `<starttls/>` is answered with
/// `<failure/>`, so configure `c2s.require_encryption = false` to offer SASL. Everything else —
/// negotiation, limits, routing, session destruction — is the code a TCP client meets. The
/// caller must keep reading its end, or the server's writes block as on a full socket. Not
/// counted against `limits.max_connections_per_ip`. For fuzzing and tests.
pub async fn serve_memory(ctx: Arc<C2sContext>, stream: DuplexStream, peer: SocketAddr) {
    let transport = StreamTransport::new(&ctx, Io::Memory(stream), false);
    engine::serve(ctx, transport, peer, false).await;
}
