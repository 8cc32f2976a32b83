//! The endpoint's UDP socket.

use std::net::SocketAddr;

use tracing::debug;

use crate::transport::udp_socket;

/// Largest datagram we take: our packets never exceed the 1,200-byte QUIC minimum
/// (MTU discovery is off); 1,472 is what fits a 1,500-byte Ethernet frame.
pub(super) const MAX_DATAGRAM: usize = 1472;

/// The endpoint's socket, read and written through quinn-udp as quinn does: the
/// address a datagram arrived at is the one the answer leaves from (a group master
/// listening on every address of a multi-homed host), and ECN marks pass both ways.
pub(super) struct Udp {
    pub(super) socket: tokio::net::UdpSocket,
    pub(super) state: quinn_udp::UdpSocketState,
}

impl Udp {
    pub(super) fn bind(bind: SocketAddr) -> std::io::Result<Udp> {
        let socket = udp_socket(bind)?;
        socket.set_nonblocking(true)?;
        let state = quinn_udp::UdpSocketState::new((&socket).into())?;
        Ok(Udp {
            socket: tokio::net::UdpSocket::from_std(socket)?,
            state,
        })
    }

    /// One receive: a datagram, or several of the same size from one sender (GRO).
    pub(super) fn try_recv(&self, buf: &mut [u8]) -> std::io::Result<quinn_udp::RecvMeta> {
        let mut meta = [quinn_udp::RecvMeta::default()];
        self.socket.try_io(tokio::io::Interest::READABLE, || {
            self.state.recv(
                (&self.socket).into(),
                &mut [std::io::IoSliceMut::new(buf)],
                &mut meta,
            )
        })?;
        Ok(meta[0])
    }

    fn transmit<'a>(t: &quinn_proto::Transmit, buf: &'a [u8]) -> quinn_udp::Transmit<'a> {
        quinn_udp::Transmit {
            destination: t.destination,
            ecn: t
                .ecn
                .and_then(|e| quinn_udp::EcnCodepoint::from_bits(e as u8)),
            contents: &buf[..t.size],
            segment_size: t.segment_size,
            src_ip: t.src_ip,
        }
    }

    /// Send now or drop: a full send buffer loses the packet and QUIC resends what
    /// mattered (quinn instead parks the connection until the socket is writable).
    pub(super) fn send(&self, t: &quinn_proto::Transmit, buf: &[u8]) {
        let transmit = Udp::transmit(t, buf);
        let sent = self.socket.try_io(tokio::io::Interest::WRITABLE, || {
            self.state.try_send((&self.socket).into(), &transmit)
        });
        if let Err(e) = sent {
            if e.kind() != std::io::ErrorKind::WouldBlock {
                debug!(error = %e, to = %t.destination, "send failed");
            }
        }
    }

    /// Send, waiting for room in the socket buffer (for closes, sent only once).
    pub(super) async fn send_wait(&self, t: &quinn_proto::Transmit, buf: &[u8]) {
        let transmit = Udp::transmit(t, buf);
        let sent = self
            .socket
            .async_io(tokio::io::Interest::WRITABLE, || {
                self.state.try_send((&self.socket).into(), &transmit)
            })
            .await;
        if let Err(e) = sent {
            debug!(error = %e, to = %t.destination, "send failed");
        }
    }
}
