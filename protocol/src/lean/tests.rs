use super::*;
use crate::frame::decode_body;
use crate::link::{Link, LinkEndpoint};
use crate::messages::{RefusalCode, Role};
use crate::test_identities::Identities;
use crate::transport::close;
use crate::transport::{client_config, client_endpoint, client_hello, connect};
use crate::ControlStream;

/// Admits every `Hello` except from "refuse-me"; answers frames and datagrams with a
/// frame saying what it got; tells the test about closed sessions.
struct Echo {
    closed: mpsc::UnboundedSender<String>,
    handles: mpsc::UnboundedSender<LinkHandle>,
}

impl Service for Echo {
    type Session = String;

    fn server_id(&self) -> String {
        "echo".into()
    }

    fn admit(
        &mut self,
        hello: &Hello,
        peer: Option<PeerCert>,
        _remote: SocketAddr,
    ) -> Result<String, Refusal> {
        let peer = peer.expect("the client certificate reaches the service");
        if hello.id == "refuse-me" {
            return Err(Refusal::new(RefusalCode::BadIdentity, "you asked for it"));
        }
        Ok(format!("{}/{}", hello.id, peer.id))
    }

    fn opened(&mut self, out: &mut Outbox, link: LinkHandle, session: &mut String) {
        out.send(link.id, &format!("hello {session}"));
        let _ = self.handles.send(link);
    }

    fn frame(&mut self, out: &mut Outbox, link: LinkId, _: &mut String, body: &[u8]) {
        match decode_body::<String>(body) {
            Ok(text) => out.send(link, &format!("frame {text}")),
            Err(_) => out.close(link, close::PROTOCOL_ERROR, &b"bad frame"[..]),
        }
    }

    fn datagram(&mut self, out: &mut Outbox, link: LinkId, _: &mut String, body: &[u8]) {
        out.send(link, &format!("datagram {}", String::from_utf8_lossy(body)));
    }

    fn wake(&mut self, out: &mut Outbox, link: LinkId, _: &mut String) {
        out.send(link, &"woken".to_string());
    }

    fn closed(&mut self, _: LinkId, session: String, _why: &str) {
        let _ = self.closed.send(session);
    }
}

struct Rig {
    ids: Identities,
    client: LinkEndpoint,
    addr: SocketAddr,
    remote: Remote,
    closed: mpsc::UnboundedReceiver<String>,
    handles: mpsc::UnboundedReceiver<LinkHandle>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

const WAIT: Duration = Duration::from_secs(5);

impl Rig {
    fn start() -> Rig {
        let ids = Identities::new();
        let settings = LeanSettings {
            who: "test",
            max_frame: 1024,
            hello_timeout: Duration::from_millis(500),
        };
        let endpoint = LeanEndpoint::bind(
            "127.0.0.1:0".parse().unwrap(),
            &crate::LiveIdentity::new(ids.server.clone()).unwrap(),
            ClientAuth::Required,
            ids.timing,
            settings,
        )
        .unwrap();
        let (closed_tx, closed) = mpsc::unbounded_channel();
        let (handles_tx, handles) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let addr = endpoint.local_addr();
        let remote = endpoint.remote();
        let service = Echo {
            closed: closed_tx,
            handles: handles_tx,
        };
        let task = tokio::spawn(endpoint.serve(service, shutdown.clone()));
        Rig {
            ids,
            client: client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap(),
            addr,
            remote,
            closed,
            handles,
            shutdown,
            task,
        }
    }

    async fn connect(&self) -> Link {
        let config = client_config(self.ids.client.client_tls().unwrap(), self.ids.timing).unwrap();
        connect(&self.client, config, self.addr, self.ids.server_name, WAIT)
            .await
            .expect("handshake")
    }

    async fn link(&self, id: &str) -> (Link, Result<ControlStream, LinkError>) {
        let conn = self.connect().await;
        let hello = client_hello(&conn, &Hello::new(Role::Agent, id), 1024, WAIT).await;
        (conn, hello)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}

async fn next(control: &mut ControlStream) -> String {
    tokio::time::timeout(WAIT, control.recv::<String>())
        .await
        .expect("a frame in time")
        .expect("a decodable frame")
        .expect("the stream is open")
}

async fn close_code(conn: &Link) -> Option<u32> {
    tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("closed in time")
        .peer_code()
}

#[tokio::test]
async fn an_admitted_link_carries_frames_datagrams_and_wakes_both_ways() {
    let mut rig = Rig::start();
    let (conn, control) = rig.link("n1").await;
    let mut control = control.expect("welcomed");
    assert_eq!(
        next(&mut control).await,
        "hello n1/n1",
        "session from hello and cert"
    );
    control.send(&"one".to_string()).await.unwrap();
    assert_eq!(next(&mut control).await, "frame one");
    conn.send_datagram(Bytes::from_static(b"beat")).unwrap();
    assert_eq!(next(&mut control).await, "datagram beat");
    let handle = rig.handles.recv().await.unwrap();
    handle.wake();
    assert_eq!(next(&mut control).await, "woken");
    rig.remote.broadcast(&"to all".to_string());
    assert_eq!(next(&mut control).await, "to all");
    conn.close(0, "done");
    let closed = tokio::time::timeout(WAIT, rig.closed.recv()).await.unwrap();
    assert_eq!(
        closed.as_deref(),
        Some("n1/n1"),
        "the service hears the end"
    );
    rig.stop().await;
}

#[tokio::test]
async fn a_refused_hello_gets_its_reason_then_the_link_closes_as_refused() {
    let rig = Rig::start();
    let (conn, control) = rig.link("refuse-me").await;
    let refusal = control
        .err()
        .and_then(|e| e.refusal().cloned())
        .expect("refused");
    assert_eq!(refusal.code, RefusalCode::BadIdentity);
    assert_eq!(refusal.message, "you asked for it");
    assert_eq!(close_code(&conn).await, Some(close::REFUSED));
    rig.stop().await;
}

#[tokio::test]
async fn a_link_is_closed_from_another_task_with_its_code() {
    let mut rig = Rig::start();
    let (conn, control) = rig.link("n1").await;
    let _control = control.expect("welcomed");
    let handle = rig.handles.recv().await.unwrap();
    handle.close(close::REMOVED, "removed");
    assert_eq!(close_code(&conn).await, Some(close::REMOVED));
    assert!(
        rig.closed.recv().await.is_some(),
        "the service hears the end"
    );
    rig.stop().await;
}

#[tokio::test]
async fn a_bad_frame_or_silence_closes_that_link_only_and_others_go_on() {
    let rig = Rig::start();
    let (good, control) = rig.link("good").await;
    let mut good_control = control.expect("welcomed");
    let _ = next(&mut good_control).await;

    // A length over the limit.
    let (bad, control) = rig.link("bad").await;
    let mut bad_control = control.expect("welcomed");
    bad_control
        .write_raw(&(1u32 << 20).to_be_bytes())
        .await
        .unwrap();
    assert_eq!(close_code(&bad).await, Some(close::PROTOCOL_ERROR));

    // No hello at all within the hello timeout.
    let silent = rig.connect().await;
    assert_eq!(close_code(&silent).await, Some(close::PROTOCOL_ERROR));

    good_control.send(&"still here".to_string()).await.unwrap();
    assert_eq!(next(&mut good_control).await, "frame still here");
    good.close(0, "done");
    rig.stop().await;
}

#[tokio::test]
async fn shutdown_closes_every_link_as_shutdown() {
    let rig = Rig::start();
    let (a, ca) = rig.link("a").await;
    let (b, cb) = rig.link("b").await;
    let (_ca, _cb) = (ca.expect("welcomed"), cb.expect("welcomed"));
    rig.stop().await;
    assert_eq!(close_code(&a).await, Some(close::SHUTDOWN));
    assert_eq!(close_code(&b).await, Some(close::SHUTDOWN));
}
