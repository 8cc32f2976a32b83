//! A UDP relay between a group master and the cluster master that can drop everything
//! (a network partition: silence both ways, no close) and can be pointed at another
//! cluster master (a replacement on a new address).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct Relay {
    pub local: SocketAddr,
    blocked: Arc<AtomicBool>,
    target: Arc<Mutex<SocketAddr>>,
}

fn get(m: &Mutex<Option<SocketAddr>>) -> Option<SocketAddr> {
    *m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Relay {
    /// Relay datagrams from one client (the last to send) to `target` and back.
    pub async fn start(target: SocketAddr, shutdown: CancellationToken) -> std::io::Result<Relay> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let local = front.local_addr()?;
        let blocked = Arc::new(AtomicBool::new(false));
        let target = Arc::new(Mutex::new(target));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        {
            let (front, back, blocked, client, target, shutdown) = (
                front.clone(),
                back.clone(),
                blocked.clone(),
                client.clone(),
                target.clone(),
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
                    let to = *target.lock().unwrap_or_else(|p| p.into_inner());
                    if !blocked.load(Ordering::Relaxed) {
                        let _ = back.send_to(&buf[..n], to).await;
                    }
                }
            });
        }
        {
            let (blocked, target) = (blocked.clone(), target.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    let (n, from) = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        r = back.recv_from(&mut buf) => match r { Ok(x) => x, Err(_) => continue },
                    };
                    let current = *target.lock().unwrap_or_else(|p| p.into_inner());
                    if from != current || blocked.load(Ordering::Relaxed) {
                        continue;
                    }
                    if let Some(to) = get(&client) {
                        let _ = front.send_to(&buf[..n], to).await;
                    }
                }
            });
        }
        Ok(Relay {
            local,
            blocked,
            target,
        })
    }

    pub fn set_blocked(&self, blocked: bool) {
        self.blocked.store(blocked, Ordering::Relaxed);
    }

    /// Send everything to another cluster master from now on.
    pub fn set_target(&self, target: SocketAddr) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = target;
    }
}
