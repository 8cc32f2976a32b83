//! A UDP relay between a group master and the cluster master that can drop everything
//! (a network partition: silence both ways, no close).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct Relay {
    pub local: SocketAddr,
    blocked: Arc<AtomicBool>,
}

impl Relay {
    /// Relay datagrams from one client (the first to send) to `target` and back.
    pub async fn start(target: SocketAddr, shutdown: CancellationToken) -> std::io::Result<Relay> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        back.connect(target).await?;
        let local = front.local_addr()?;
        let blocked = Arc::new(AtomicBool::new(false));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        {
            let (front, back, blocked, client, shutdown) = (
                front.clone(),
                back.clone(),
                blocked.clone(),
                client.clone(),
                shutdown.clone(),
            );
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    let (n, from) = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        r = front.recv_from(&mut buf) => match r { Ok(x) => x, Err(_) => continue },
                    };
                    *client.lock().unwrap_or_else(|p| p.into_inner()) = Some(from);
                    if !blocked.load(Ordering::Relaxed) {
                        let _ = back.send(&buf[..n]).await;
                    }
                }
            });
        }
        {
            let blocked = blocked.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        r = back.recv(&mut buf) => match r { Ok(n) => n, Err(_) => continue },
                    };
                    let to = *client.lock().unwrap_or_else(|p| p.into_inner());
                    if let (Some(to), false) = (to, blocked.load(Ordering::Relaxed)) {
                        let _ = front.send_to(&buf[..n], to).await;
                    }
                }
            });
        }
        Ok(Relay { local, blocked })
    }

    pub fn set_blocked(&self, blocked: bool) {
        self.blocked.store(blocked, Ordering::Relaxed);
    }
}
