//! [`DnsServer`]: a name server on loopback whose records a test changes, for pindb's DNS
//! discovery (real DNS over UDP, answered with hickory-proto's message types).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinEncodable};

#[derive(Default)]
struct Records {
    a: HashMap<String, Vec<Ipv4Addr>>,
    srv: HashMap<String, Vec<(String, u16)>>,
}

#[derive(Default)]
struct State {
    records: Mutex<Records>,
    /// Answer SERVFAIL to everything: a name server in trouble.
    failing: AtomicBool,
    queries: AtomicUsize,
}

/// A UDP name server on `127.0.0.1`, stopped when dropped. Names are written without the
/// trailing dot; a name with no records gets an empty answer.
///
/// ```no_run
/// # #[tokio::main] async fn main() {
/// let dns = pindb_testkit::DnsServer::start().await;
/// dns.set_srv("_pg._tcp.pindb.test", &[("127.0.0.1", 25433)]);
/// let nameserver = dns.address(); // discovery.nameserver
/// # }
/// ```
pub struct DnsServer {
    address: std::net::SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl DnsServer {
    /// Binds a free port and starts answering.
    pub async fn start() -> DnsServer {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("binding a UDP port on loopback for the test name server");
        let address = socket.local_addr().expect("the test name server's address");
        let state = Arc::new(State::default());
        let serving = Arc::clone(&state);
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let Ok(query) = Message::from_bytes(&buf[..n]) else {
                    continue;
                };
                serving.queries.fetch_add(1, Ordering::Relaxed);
                if let Ok(bytes) = answer(&serving, &query).to_bytes() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        DnsServer {
            address,
            state,
            task,
        }
    }

    /// `ip:port`, for `discovery.nameserver`.
    pub fn address(&self) -> String {
        self.address.to_string()
    }

    /// The A records of `name` from now on.
    pub fn set_a(&self, name: &str, ips: &[Ipv4Addr]) {
        let mut records = self.state.records.lock().unwrap();
        records.a.insert(name.to_owned(), ips.to_vec());
    }

    /// The SRV records of `name` from now on: `(target, port)` each.
    pub fn set_srv(&self, name: &str, targets: &[(&str, u16)]) {
        let mut records = self.state.records.lock().unwrap();
        let targets = targets.iter().map(|(t, p)| (t.to_string(), *p)).collect();
        records.srv.insert(name.to_owned(), targets);
    }

    /// From now on every query fails (SERVFAIL), or answers again.
    pub fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::Relaxed);
    }

    /// Queries received so far.
    pub fn queries(&self) -> usize {
        self.state.queries.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(state: &State, query: &Message) -> Message {
    let mut response = Message::new();
    response
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(true)
        .add_queries(query.queries().to_vec());
    if state.failing.load(Ordering::Relaxed) {
        response.set_response_code(ResponseCode::ServFail);
        return response;
    }
    let records = state.records.lock().unwrap();
    for q in query.queries() {
        let name = q.name().to_utf8();
        let name = name.trim_end_matches('.');
        match q.query_type() {
            RecordType::A => {
                for ip in records.a.get(name).into_iter().flatten() {
                    let rdata = RData::A(A(*ip));
                    response.add_answer(Record::from_rdata(q.name().clone(), 0, rdata));
                }
            }
            RecordType::SRV => {
                for (target, port) in records.srv.get(name).into_iter().flatten() {
                    let Ok(target) = Name::from_ascii(format!("{target}.")) else {
                        continue;
                    };
                    let rdata = RData::SRV(SRV::new(0, 0, *port, target));
                    response.add_answer(Record::from_rdata(q.name().clone(), 0, rdata));
                }
            }
            _ => {}
        }
    }
    response
}
