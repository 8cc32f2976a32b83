//! One neighbour: the handshake, then a reader (its messages, our requests) and a
//! writer (our messages and the blocks it asked for) so that two peers sending each
//! other pieces never wait on each other's reads. Every neighbour is unchoked from
//! the start and never choked.

use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::pieces::from_bitfield;
use super::wire::{exchange_handshakes, read_message, Message, WireError, MAX_BLOCK};
use super::{lock, stopped, Neighbour, Out, Shared, MAX_NEIGHBOURS};

/// The block size we ask for (16 KiB, what every client serves).
const BLOCK: u32 = 16 << 10;
/// Bytes asked of one neighbour and not yet received.
const DEPTH: u32 = 12 * BLOCK;
/// A neighbour that sends nothing for this long while we wait on it is dropped.
const SNUBBED: Duration = Duration::from_secs(60);
const HANDSHAKE: Duration = Duration::from_secs(10);
/// Pieces from one neighbour that fail their hash before it is dropped.
const MAX_BAD: u32 = 3;
/// Blocks a neighbour may have asked for and not yet received (clients keep tens to
/// a few hundred in flight); more is an attack on our memory.
const MAX_QUEUED: usize = 1024;

/// A piece being fetched from this neighbour.
struct Partial {
    index: u32,
    buf: Vec<u8>,
    asked: u32,
    /// Bytes of distinct blocks received, and which blocks.
    received: u32,
    got: Vec<bool>,
}

struct Conn {
    shared: Arc<Shared>,
    /// The neighbour's peer id and its entry's number.
    id: [u8; 20],
    no: u64,
    writer: tokio::task::JoinHandle<()>,
    tx: mpsc::UnboundedSender<Out>,
    /// Blocks queued for the writer.
    queued: Arc<AtomicUsize>,
    theirs: Vec<bool>,
    choked: bool,
    interested: bool,
    /// A full search found nothing to ask of this neighbour: wait for its news, or
    /// for a piece given up elsewhere ([`super::pieces::Pieces::freed`]).
    starved: bool,
    freed_seen: u64,
    partials: Vec<Partial>,
    bad: u32,
    last_data: Instant,
}

/// Run the connection `stream` (to `dialled`, or accepted) until either side ends it.
pub(super) async fn run(shared: Arc<Shared>, mut stream: TcpStream, dialled: Option<SocketAddr>) {
    let _ = stream.set_nodelay(true);
    let greeting = exchange_handshakes(&mut stream, &shared.info_hash, &shared.peer_id);
    let id = match tokio::time::timeout(HANDSHAKE, greeting).await {
        Ok(Ok(id)) => id,
        Ok(Err(e)) => return debug!(?dialled, "handshake: {e}"),
        Err(_) => return debug!(?dialled, "handshake: timed out"),
    };
    if id == shared.peer_id {
        return;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let (close_tx, close_rx) = watch::channel(false);
    let Some(no) = register(&shared, id, dialled, tx.clone(), close_tx) else {
        return;
    };
    let (r, w) = stream.into_split();
    let queued = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn(write_loop(shared.clone(), w, rx, queued.clone()));
    let n = lock(&shared.pieces).count();
    let mut c = Conn {
        shared: shared.clone(),
        id,
        no,
        writer,
        tx,
        queued,
        theirs: vec![false; n],
        choked: true,
        interested: false,
        starved: false,
        freed_seen: 0,
        partials: Vec::new(),
        bad: 0,
        last_data: Instant::now(),
    };
    if let Err(e) = c.read_loop(r, close_rx).await {
        debug!(?dialled, "neighbour dropped: {e}");
    }
}

impl Drop for Conn {
    /// However the connection ended (a panic too), its claims and its news go.
    fn drop(&mut self) {
        {
            let mut pieces = lock(&self.shared.pieces);
            for p in self.partials.drain(..) {
                pieces.release(p.index);
            }
            for (p, has) in self.theirs.iter().enumerate() {
                if *has {
                    pieces.seen(p as u32, false);
                }
            }
        }
        {
            let mut n = lock(&self.shared.neighbours);
            if n.by_id.get(&self.id).is_some_and(|e| e.no == self.no) {
                n.by_id.remove(&self.id);
            }
        }
        self.writer.abort();
    }
}

/// Add a neighbour: its number, or `None` if it is not kept (a second connection
/// between the same pair keeps the one the smaller peer id started, on both ends).
fn register(
    shared: &Shared,
    id: [u8; 20],
    dialled: Option<SocketAddr>,
    tx: mpsc::UnboundedSender<Out>,
    close: watch::Sender<bool>,
) -> Option<u64> {
    let mut n = lock(&shared.neighbours);
    if let Some(addr) = dialled {
        n.known.insert(addr, id);
    }
    let initiator = if dialled.is_some() {
        shared.peer_id
    } else {
        id
    };
    match n.by_id.get(&id) {
        Some(e) if e.initiator <= initiator => return None,
        Some(e) => {
            let _ = e.close.send(true);
        }
        None if n.by_id.len() >= MAX_NEIGHBOURS => return None,
        None => {}
    }
    // Our pieces first, queued before the neighbour can be told of a new one (the
    // only place `neighbours` and `pieces` are locked together, in that order); and
    // every neighbour is unchoked.
    {
        let p = lock(&shared.pieces);
        if p.have_count() > 0 {
            let _ = tx.send(Out::Msg(Message::Bitfield(p.bitfield())));
        }
    }
    let _ = tx.send(Out::Msg(Message::Unchoke));
    n.next_no += 1;
    let no = n.next_no;
    n.by_id.insert(
        id,
        Neighbour {
            no,
            initiator,
            tx,
            close,
        },
    );
    Some(no)
}

impl Conn {
    fn send(&self, m: Message) {
        let _ = self.tx.send(Out::Msg(m));
    }

    async fn read_loop(
        &mut self,
        r: OwnedReadHalf,
        mut close: watch::Receiver<bool>,
    ) -> Result<(), String> {
        let n = self.theirs.len();
        let max = (MAX_BLOCK + 9).max(n.div_ceil(8) as u32 + 1);
        // Messages come through a task of their own: a read cut short by another
        // branch of the select would lose the stream's framing.
        let (msg_tx, mut msgs) = mpsc::channel(64);
        let reader = tokio::spawn(async move {
            let mut r = BufReader::with_capacity(64 << 10, r);
            loop {
                let m = read_message(&mut r, max).await;
                let end = m.is_err();
                if msg_tx.send(m).await.is_err() || end {
                    break;
                }
            }
        });
        let mut stop = self.shared.stop.clone();
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        let outcome = loop {
            tokio::select! {
                _ = stopped(&mut stop) => break Ok(()),
                _ = stopped(&mut close) => break Ok(()),
                _ = tick.tick() => {
                    if !self.partials.is_empty() && self.last_data.elapsed() > SNUBBED {
                        break Err("no data for a minute".to_string());
                    }
                    self.starved = false;
                    self.fill();
                }
                m = msgs.recv() => match m {
                    Some(Ok(m)) => {
                        if let Err(e) = self.handle(m) {
                            break Err(e);
                        }
                    }
                    Some(Err(WireError::Io(e))) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        break Ok(());
                    }
                    Some(Err(e)) => break Err(e.to_string()),
                    None => break Ok(()),
                },
            }
        };
        reader.abort();
        outcome
    }

    fn handle(&mut self, m: Message) -> Result<(), String> {
        let n = self.theirs.len();
        match m {
            Message::KeepAlive
            | Message::Other(_)
            | Message::Interested
            | Message::NotInterested
            | Message::Cancel { .. } => {}
            Message::Choke => {
                self.choked = true;
                let mut pieces = lock(&self.shared.pieces);
                for p in self.partials.drain(..) {
                    pieces.release(p.index);
                }
            }
            Message::Unchoke => {
                self.choked = false;
                self.starved = false;
                self.fill();
            }
            // BEP 3 sends it first or not at all; aria2c sends one later too, once it
            // has pieces, so any bitfield replaces what we knew.
            Message::Bitfield(bytes) => {
                let bits = from_bitfield(&bytes, n).ok_or("a bitfield of the wrong length")?;
                let wanted = {
                    let mut pieces = lock(&self.shared.pieces);
                    let mut wanted = false;
                    for (p, (has, had)) in bits.iter().zip(&self.theirs).enumerate() {
                        if has != had {
                            pieces.seen(p as u32, *has);
                        }
                        wanted |= *has && !pieces.has(p as u32);
                    }
                    wanted
                };
                self.theirs = bits;
                if wanted && !self.interested {
                    self.interested = true;
                    self.send(Message::Interested);
                }
                self.starved = false;
                self.fill();
            }
            Message::Have(p) => {
                if p as usize >= n {
                    return Err(format!("have {p}: there are {n} pieces"));
                }
                let new = !self.theirs[p as usize];
                self.theirs[p as usize] = true;
                let (want, took) = {
                    let mut pieces = lock(&self.shared.pieces);
                    if new {
                        pieces.seen(p, true);
                    }
                    let want = !pieces.has(p);
                    // An idle connection takes the news at once, without a search.
                    let idle = !self.choked
                        && self.in_flight() < DEPTH
                        && self
                            .partials
                            .iter()
                            .all(|x| x.asked as usize == x.buf.len());
                    let took = idle && want && pieces.take(p);
                    (want, took.then(|| pieces.size(p)))
                };
                if want && !self.interested {
                    self.interested = true;
                    self.send(Message::Interested);
                }
                if let Some(size) = took {
                    self.partials.push(Partial::new(p, size));
                    self.starved = false;
                }
                self.fill();
            }
            Message::Request {
                index,
                begin,
                length,
            } => {
                let ok = {
                    let pieces = lock(&self.shared.pieces);
                    pieces.has(index)
                        && length > 0
                        && length <= MAX_BLOCK
                        && begin
                            .checked_add(length)
                            .is_some_and(|e| e <= pieces.size(index))
                };
                if ok {
                    if self.queued.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED {
                        return Err(format!("over {MAX_QUEUED} blocks asked for at once"));
                    }
                    let _ = self.tx.send(Out::Block {
                        index,
                        begin,
                        length,
                    });
                } else {
                    debug!(index, begin, length, "a request we cannot serve");
                }
            }
            Message::Piece { index, begin, data } => self.received(index, begin, data)?,
        }
        Ok(())
    }

    fn in_flight(&self) -> u32 {
        self.partials.iter().map(|p| p.asked - p.received).sum()
    }

    /// Ask for more, up to the depth: the rest of the pieces under way, then new ones.
    fn fill(&mut self) {
        if self.choked {
            return;
        }
        let mut asks = Vec::new();
        let idle = self.in_flight() == 0;
        {
            let mut pieces = lock(&self.shared.pieces);
            // A piece given up elsewhere (choked, gone, corrupt) is worth a new search.
            if self.starved && pieces.freed() != self.freed_seen {
                self.starved = false;
            }
            self.freed_seen = pieces.freed();
            // Pieces another connection finished first (the end game) are dropped.
            self.partials.retain(|p| {
                let done = pieces.has(p.index);
                if done {
                    pieces.release(p.index);
                }
                !done
            });
            while self.in_flight() < DEPTH {
                if let Some(p) = self
                    .partials
                    .iter_mut()
                    .find(|p| (p.asked as usize) < p.buf.len())
                {
                    let length = BLOCK.min(p.buf.len() as u32 - p.asked);
                    asks.push(Message::Request {
                        index: p.index,
                        begin: p.asked,
                        length,
                    });
                    p.asked += length;
                    continue;
                }
                if self.starved {
                    break;
                }
                let mine: Vec<u32> = self.partials.iter().map(|p| p.index).collect();
                let start = rand::random_range(0..self.theirs.len().max(1));
                match pieces.pick(&self.theirs, &mine, start) {
                    Some(p) => {
                        let size = pieces.size(p);
                        self.partials.push(Partial::new(p, size));
                    }
                    None => {
                        self.starved = true;
                        break;
                    }
                }
            }
        }
        // The silence a neighbour is judged by starts with our first request.
        if idle && !asks.is_empty() {
            self.last_data = Instant::now();
        }
        for a in asks {
            self.send(a);
        }
    }

    /// A block arrived: store it; a whole piece is verified, written and announced.
    fn received(&mut self, index: u32, begin: u32, data: Vec<u8>) -> Result<(), String> {
        self.last_data = Instant::now();
        // A block of a piece given up on (choked, or finished elsewhere) is dropped.
        let Some(i) = self.partials.iter().position(|p| p.index == index) else {
            return Ok(());
        };
        let part = &mut self.partials[i];
        // Exactly a block we asked for: aligned, asked, of its length.
        let block = (begin / BLOCK) as usize;
        let length = BLOCK.min((part.buf.len() as u32).saturating_sub(begin));
        if !begin.is_multiple_of(BLOCK) || begin >= part.asked || data.len() != length as usize {
            return Err(format!(
                "piece {index}: {} bytes at {begin}, not a block we asked for",
                data.len()
            ));
        }
        if part.got[block] {
            return Ok(());
        }
        part.got[block] = true;
        let end = begin as usize + data.len();
        part.buf[begin as usize..end].copy_from_slice(&data);
        part.received += length;
        if part.received as usize >= part.buf.len() {
            let part = self.partials.swap_remove(i);
            self.store(part)?;
        }
        self.fill();
        Ok(())
    }

    fn store(&mut self, part: Partial) -> Result<(), String> {
        let shared = &self.shared;
        let good = Sha1::digest(&part.buf).as_slice() == shared.hashes[part.index as usize];
        if !good {
            lock(&shared.pieces).release(part.index);
            self.bad += 1;
            warn!(piece = part.index, "a piece failed its hash");
            if self.bad >= MAX_BAD {
                return Err(format!("{} pieces failed their hash", self.bad));
            }
            return Ok(());
        }
        let offset = part.index as u64 * shared.piece_length;
        if let Err(e) = shared.file.write_all_at(&part.buf, offset) {
            let e = format!("writing the file: {e}");
            lock(&shared.pieces).release(part.index);
            shared.update_progress(Some(e.clone()));
            return Err(e);
        }
        let (new, complete) = {
            let mut pieces = lock(&shared.pieces);
            let new = pieces.got(part.index);
            pieces.release(part.index);
            (new, pieces.complete())
        };
        if new {
            shared
                .downloaded
                .fetch_add(part.buf.len() as u64, Ordering::Relaxed);
            shared.broadcast(Message::Have(part.index));
            if complete {
                shared.broadcast(Message::NotInterested);
            }
            shared.update_progress(None);
        }
        Ok(())
    }
}

impl Partial {
    fn new(index: u32, size: u32) -> Partial {
        Partial {
            index,
            buf: vec![0; size as usize],
            asked: 0,
            received: 0,
            got: vec![false; size.div_ceil(BLOCK) as usize],
        }
    }
}

/// Send what the reader queued: messages, and blocks read from the file.
async fn write_loop(
    shared: Arc<Shared>,
    w: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Out>,
    queued: Arc<AtomicUsize>,
) {
    let mut w = BufWriter::with_capacity(64 << 10, w);
    let mut block = Vec::new();
    loop {
        let out = match tokio::time::timeout(Duration::from_secs(100), rx.recv()).await {
            Err(_) => Out::Msg(Message::KeepAlive),
            Ok(None) => break,
            Ok(Some(o)) => o,
        };
        let sent = match out {
            Out::Msg(m) => w.write_all(&m.encode()).await,
            Out::Block {
                index,
                begin,
                length,
            } => {
                queued.fetch_sub(1, Ordering::Relaxed);
                if let Some(limit) = &shared.limit {
                    limit.take(length).await;
                }
                block.resize(length as usize, 0);
                let offset = index as u64 * shared.piece_length + begin as u64;
                if let Err(e) = shared.file.read_exact_at(&mut block, offset) {
                    warn!("reading a block for a neighbour: {e}");
                    break;
                }
                let mut head = (9 + length).to_be_bytes().to_vec();
                head.push(7);
                head.extend_from_slice(&index.to_be_bytes());
                head.extend_from_slice(&begin.to_be_bytes());
                let r = async {
                    w.write_all(&head).await?;
                    w.write_all(&block).await
                };
                let r = r.await;
                if r.is_ok() {
                    shared.uploaded.fetch_add(length as u64, Ordering::Relaxed);
                }
                r
            }
        };
        if sent.is_err() || (rx.is_empty() && w.flush().await.is_err()) {
            break;
        }
    }
    let _ = w.shutdown().await;
}
