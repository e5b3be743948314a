//! The TCP listener: Nagle's algorithm off on every connection (a push is
//! a small write that must leave now, not after the peer's delayed ACK).

use std::io::Result as IoResult;

use poem::http::uri::Scheme;
use poem::listener::{Acceptor, TcpAcceptor};
use poem::web::{LocalAddr, RemoteAddr};
use tokio::net::TcpStream;

pub struct NoDelayAcceptor {
    inner: TcpAcceptor,
}

impl NoDelayAcceptor {
    pub async fn bind(addr: &str) -> IoResult<NoDelayAcceptor> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        Ok(NoDelayAcceptor {
            inner: TcpAcceptor::from_tokio(listener)?,
        })
    }
}

impl Acceptor for NoDelayAcceptor {
    type Io = TcpStream;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> IoResult<(TcpStream, LocalAddr, RemoteAddr, Scheme)> {
        let (io, local, remote, scheme) = self.inner.accept().await?;
        if let Err(e) = io.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        Ok((io, local, remote, scheme))
    }
}
