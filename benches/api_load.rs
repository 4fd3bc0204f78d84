//! Load on a running tinyvisor's API: 50 clients with kept-alive connections for 10 s on one
//! path, then the next; prints throughput, latency percentiles, non-200 answers and the
//! daemon's memory while it runs (a benchmark, not a test).
//!
//! `cargo bench --bench api_load -- <port> <daemon pid> [clients] [seconds] [path ...]`

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn rss(pid: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("VmRSS") || l.starts_with("VmHWM") || l.starts_with("Threads"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One request on a kept-alive connection; the status (0 when the connection broke).
fn request(r: &mut BufReader<TcpStream>, path: &str) -> u16 {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    if r.get_mut().write_all(req.as_bytes()).is_err() {
        return 0;
    }
    let mut status = 0;
    let mut length = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return 0;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if status == 0 {
            status = l
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
        } else if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; length];
    if r.read_exact(&mut body).is_err() {
        return 0;
    }
    status
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.len() < 2 {
        eprintln!("usage: api_load <port> <pid> [clients] [seconds] [path ...]");
        return;
    }
    let port: u16 = args[0].parse().expect("port");
    let pid = args[1].clone();
    let clients: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(50);
    let seconds: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(10);
    let paths: Vec<String> = if args.len() > 4 {
        args[4..].to_vec()
    } else {
        vec!["/ping".into(), "/v2/state/status".into()]
    };
    for path in paths {
        let until = Instant::now() + Duration::from_secs(seconds);
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let mut lat = Vec::new();
                    let mut bad = 0usize;
                    let mut conn: Option<BufReader<TcpStream>> = None;
                    while Instant::now() < until {
                        let r = match conn.as_mut() {
                            Some(r) => r,
                            None => match TcpStream::connect(("127.0.0.1", port)) {
                                Ok(s) => {
                                    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
                                    conn.insert(BufReader::new(s))
                                }
                                Err(_) => {
                                    bad += 1;
                                    std::thread::sleep(Duration::from_millis(10));
                                    continue;
                                }
                            },
                        };
                        let t = Instant::now();
                        let status = request(r, &path);
                        lat.push(t.elapsed());
                        if status != 200 {
                            bad += 1;
                            conn = None;
                        }
                    }
                    (lat, bad)
                })
            })
            .collect();
        let mut peak = String::new();
        while Instant::now() < until {
            std::thread::sleep(Duration::from_secs(1));
            peak = rss(&pid);
        }
        let mut all = Vec::new();
        let mut bad = 0;
        for w in workers {
            let (l, b) = w.join().unwrap();
            all.extend(l);
            bad += b;
        }
        all.sort();
        let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
        println!(
            "{clients} clients x {seconds} s GET {path}: {} requests ({:.0}/s), non-200 or broken {bad}, latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; daemon during: {peak}",
            all.len(),
            all.len() as f64 / seconds as f64,
            pct(0.5).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
            all.last().unwrap().as_secs_f64() * 1e3,
        );
    }
    println!("daemon after: {}", rss(&pid));
}
