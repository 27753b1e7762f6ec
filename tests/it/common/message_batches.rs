//! Reading the mock's Anthropic Message Batches directly.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

/// Every message batch the mock at `addr` has, oldest first (asked with `key`).
pub fn oldest_first(addr: &str, key: &str) -> Vec<Value> {
    let mut s = TcpStream::connect(addr).expect("connect mock");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /v1/messages/batches?limit=1000 HTTP/1.1\r\nHost: {addr}\r\nx-api-key: {key}\r\n\
         anthropic-version: 2023-06-01\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let body = resp.split_once("\r\n\r\n").map_or("", |x| x.1);
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{body}: {e}"));
    let mut all = v["data"].as_array().cloned().unwrap_or_default();
    all.reverse();
    all
}
