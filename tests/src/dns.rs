//! A small authoritative DNS server on 127.0.0.1 for the tests: it answers SRV and A questions
//! from a zone the test sets and changes while it runs, and NXDOMAIN to everything else. Messages are
//! read and written with `hickory-proto` (the library the agent's resolver is built on); the
//! answers go over UDP, the way a resolver asks first.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{Name, RData, Record, RecordType, rdata::SRV},
};
use tokio::net::UdpSocket;

/// One SRV record: priority, weight, port, target host.
#[derive(Debug, Clone)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

impl Srv {
    /// A record of priority 0 and weight 100 (what Active Directory registers).
    pub fn new(target: &str, port: u16) -> Self {
        Self {
            priority: 0,
            weight: 100,
            port,
            target: target.into(),
        }
    }
}

/// What a name holds.
#[derive(Debug, Clone, Default)]
struct Records {
    srv: Vec<Srv>,
    a: Vec<std::net::Ipv4Addr>,
}

type Zone = HashMap<String, Records>;

/// The running server; stops when dropped.
pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    questions: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl DnsServer {
    /// Starts answering on a free UDP port of 127.0.0.1.
    pub async fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind DNS port");
        let addr = socket.local_addr().unwrap();
        let zone: Arc<Mutex<Zone>> = Arc::default();
        let questions: Arc<Mutex<Vec<String>>> = Arc::default();
        let task = tokio::spawn(serve(socket, Arc::clone(&zone), Arc::clone(&questions)));
        Self {
            addr,
            zone,
            questions,
            task,
        }
    }

    /// Where to ask (`name_servers = ["<this>"]`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the records of `name` (a fully qualified name, trailing dot included); an empty
    /// list removes the name.
    pub fn set(&self, name: &str, records: Vec<Srv>) {
        self.change(name, |held| held.srv = records);
    }

    /// Sets the IPv4 addresses of `name` (fully qualified); an empty list removes them.
    pub fn set_addresses(&self, name: &str, addresses: Vec<std::net::Ipv4Addr>) {
        self.change(name, |held| held.a = addresses);
    }

    fn change(&self, name: &str, edit: impl FnOnce(&mut Records)) {
        let mut zone = self.zone.lock().unwrap();
        let key = name.to_ascii_lowercase();
        let held = zone.entry(key.clone()).or_default();
        edit(held);
        if held.srv.is_empty() && held.a.is_empty() {
            zone.remove(&key);
        }
    }

    /// The names asked so far, in order.
    pub fn questions(&self) -> Vec<String> {
        self.questions.lock().unwrap().clone()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(socket: UdpSocket, zone: Arc<Mutex<Zone>>, questions: Arc<Mutex<Vec<String>>>) {
    let mut buffer = vec![0u8; 4096];
    loop {
        let Ok((length, peer)) = socket.recv_from(&mut buffer).await else {
            return;
        };
        let Ok(request) = Message::from_vec(&buffer[..length]) else {
            continue;
        };
        let answer = answer(&request, &zone, &questions);
        if let Ok(bytes) = answer.to_vec() {
            let _ = socket.send_to(&bytes, peer).await;
        }
    }
}

fn answer(request: &Message, zone: &Mutex<Zone>, questions: &Mutex<Vec<String>>) -> Message {
    let mut response = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.add_queries(request.queries.iter().cloned());
    let Some(query) = request.queries.first() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return response;
    };
    let name = query.name().to_ascii().to_ascii_lowercase();
    questions.lock().unwrap().push(name.clone());
    let records = zone.lock().unwrap().get(&name).cloned();
    match (records, query.query_type()) {
        (Some(records), RecordType::SRV) => {
            for srv in records.srv {
                let target = Name::from_ascii(&srv.target).expect("a target host name");
                // One second: a resolver's cache must not hide a change for long.
                response.add_answer(Record::from_rdata(
                    query.name().clone(),
                    1,
                    RData::SRV(SRV::new(srv.priority, srv.weight, srv.port, target)),
                ));
            }
        }
        (Some(records), RecordType::A) => {
            for address in records.a {
                response.add_answer(Record::from_rdata(
                    query.name().clone(),
                    1,
                    RData::A(address.into()),
                ));
            }
        }
        // The name exists, with no record of this type.
        (Some(_), _) => {}
        (None, _) => response.metadata.response_code = ResponseCode::NXDomain,
    }
    response
}
