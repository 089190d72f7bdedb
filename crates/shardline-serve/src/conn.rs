//! The connection loop under the router: HTTP/1.1 on hyper with every wait bounded (headers,
//! idle keep-alive, bodies, open connections) and a shutdown that answers every request already
//! sent, including those on connections the kernel accepted but the server had not yet taken.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::Error;

/// How long clients may take and how many may be connected at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// How long a client may take to send a request's line and headers, counted from the moment
    /// the server waits for them: this also closes an idle keep-alive connection.
    pub header_timeout: Duration,
    /// How long a client may take to send a request's body; then 408.
    pub body_timeout: Duration,
    /// Connections served at once; further clients wait in the kernel's accept queue.
    pub max_connections: usize,
    /// On shutdown, how long requests already sent may take to be answered before their
    /// connections are closed.
    pub grace: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 512,
            grace: Duration::from_secs(30),
        }
    }
}

impl ConnectionLimits {
    /// Refuses limits that would serve nothing or wait forever.
    pub fn check(&self) -> Result<(), Error> {
        if self.header_timeout.is_zero() || self.body_timeout.is_zero() || self.grace.is_zero() {
            return Err(Error::BadConfig(
                "the header, body and grace timeouts must be positive".into(),
            ));
        }
        if self.max_connections == 0 {
            return Err(Error::BadConfig(
                "`max_connections` must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// What a shutdown left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stopped {
    /// Connections taken from the accept queue after the stop signal, so that what their
    /// clients had sent was answered rather than reset.
    pub drained: usize,
    /// Connections still busy when the grace period ended, closed without an answer.
    pub cut: usize,
}

/// Serves `app` on `listener` until `shutdown` completes; then takes every connection already
/// waiting in the accept queue, stops listening, and returns once every request sent has been
/// answered (or the grace period is over).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Stopped, Error> {
    limits.check()?;
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    let service = TowerToHyperService::new(app);
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors, or a client that reset before it was taken: the
                // listener itself is fine; pause briefly rather than spin.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        connections.spawn(connection(
            stream,
            service.clone(),
            &limits,
            stopping.clone(),
            Some(permit),
        ));
    }
    // Connections the kernel completed before the signal are real clients whose requests may be
    // sent already: closing the listener now would reset them. Take them until the queue stays
    // empty (a connection in the queue is ready at once), within the grace period.
    let deadline = tokio::time::Instant::now() + limits.grace;
    let mut stopped = Stopped::default();
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(25), listener.accept()).await {
            Ok(Ok((stream, _))) => {
                stopped.drained += 1;
                connections.spawn(connection(
                    stream,
                    service.clone(),
                    &limits,
                    stopping.clone(),
                    None,
                ));
            }
            Ok(Err(_)) => continue,
            Err(_) => break,
        }
    }
    drop(listener);
    let _ = stop.send(true);
    let finished = tokio::time::timeout_at(deadline, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        stopped.cut = connections.len();
        connections.shutdown().await;
    }
    Ok(stopped)
}

/// One connection: HTTP/1.1 with the header timeout; on the stop signal it finishes the request
/// it is reading or answering (or the first one, if none has started) and closes.
fn connection(
    stream: tokio::net::TcpStream,
    service: TowerToHyperService<Router>,
    limits: &ConnectionLimits,
    mut stopping: watch::Receiver<bool>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> impl Future<Output = ()> + Send + 'static {
    let header_timeout = limits.header_timeout;
    async move {
        let _permit = permit;
        let _ = stream.set_nodelay(true);
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout);
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(conn);
        let mut asked = *stopping.borrow();
        if asked {
            conn.as_mut().graceful_shutdown();
        }
        loop {
            tokio::select! {
                _ = conn.as_mut() => break,
                _ = stopping.changed(), if !asked => {
                    asked = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
