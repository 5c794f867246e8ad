//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a subset

pub mod storage_servers;

use std::path::{Path, PathBuf};

/// Every file below `dir`, sorted by path.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A hostfile with `n` free loopback ports, for a timely cluster of `n` processes.
pub fn hostfile(dir: &Path, n: usize) -> PathBuf {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let hosts: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    let path = dir.join("hosts.txt");
    std::fs::write(&path, hosts.join("\n")).unwrap();
    path
}
