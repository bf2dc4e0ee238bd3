//! The push step's measured part: an open connection cut by a push that revokes it.

use std::io::{Read as _, Write as _};

use super::{
    Agent, Arc, AtomicBool, Duration, FRONTEND, Instant, Lan, Mutex, Ordering, PAYMENTS, Path, REVOKE_LIMIT, Result,
    SocketAddr, Style, TALK_PERIOD, TcpStream, counters,
};
use anyhow::Context as _;

/// The push section's measured part: an open connection, the push, and when it was cut.
pub(crate) fn revocation(lan: &Lan, agent: &Agent, v2: &Path, st: Style, problems: &mut Vec<String>) -> Result<()> {
    let (frontend, payments) = (&lan.hosts[FRONTEND], &lan.hosts[PAYMENTS]);
    let dst = SocketAddr::new(payments.v4, 8080);
    // A socket opened in the frontend namespace stays there whichever thread uses it.
    let mut stream = frontend
        .ns
        .run(move || TcpStream::connect_timeout(&dst, Duration::from_secs(1)))
        .context("frontend cannot connect to payments:8080 under the first policy")?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut hi = [0u8; 3];
    stream.read_exact(&mut hi).context("no greeting from payments:8080")?;
    let log = Arc::new(Mutex::new(Talk::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let talker = {
        let (log, stop) = (log.clone(), stop.clone());
        std::thread::spawn(move || talk(stream, &stop, &log))
    };
    let echoed = |log: &Mutex<Talk>| log.lock().unwrap().echoed.iter().flatten().count();
    let deadline = Instant::now() + Duration::from_secs(3);
    while echoed(&log) < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (sent, ok) = {
        let l = log.lock().unwrap();
        (l.sent.len(), l.echoed.iter().flatten().count())
    };
    println!(
        "  frontend -> payments {dst}: connected; a line every {} ms, {ok} of {sent} echoed so far",
        TALK_PERIOD.as_millis()
    );
    let t0 = Instant::now();
    let pushed = agent.push(v2);
    let push_took = t0.elapsed();
    println!("  ztagent policy push: {} ({} ms)", pushed.trim(), push_took.as_millis());
    std::thread::sleep(REVOKE_LIMIT + Duration::from_millis(600));
    stop.store(true, Ordering::SeqCst);
    let _ = talker.join();
    let end = Instant::now();
    let l = log.lock().unwrap();
    let ms = |t: Instant| -> i128 {
        if t >= t0 { t.duration_since(t0).as_millis() as i128 } else { -(t0.duration_since(t).as_millis() as i128) }
    };
    if ok == 0 {
        problems.push("the connection to payments:8080 exchanged nothing before the push".into());
        println!("  {}", st.alarm("!!! nothing was echoed before the push"));
        return Ok(());
    }
    // TCP delivers in order: every line after the last echoed one went unanswered.
    let last = l.echoed.iter().rposition(Option::is_some).unwrap_or(0);
    let first_lost = last + 1;
    let settled = end - Duration::from_millis(300); // lines younger than this may still be echoed
    match l.sent.get(first_lost) {
        Some(&t) if t <= settled => {
            let silent = end.duration_since(t);
            let unanswered = l.sent.len() - first_lost;
            let cut = ms(t);
            println!(
                "  last echo: line {last} (sent at {:+} ms); line {first_lost} (sent at {cut:+} ms) and all {} after it: no answer for {:.1} s",
                ms(l.sent[last]),
                unanswered - 1,
                silent.as_secs_f64()
            );
            if let Some(e) = &l.error {
                println!("  (the client socket reported: {e})");
            }
            if cut >= 0 && cut as u128 <= REVOKE_LIMIT.as_millis() {
                println!(
                    "  => {} the established connection was cut within {cut} ms of the push (limit {} ms); drop_revoked: {}",
                    st.green("REVOKED:"),
                    REVOKE_LIMIT.as_millis(),
                    counters(agent, &["drop_revoked"])?
                );
            } else {
                let msg = format!(
                    "the established connection was cut {cut} ms after the push (limit {} ms)",
                    REVOKE_LIMIT.as_millis()
                );
                println!("  {}", st.alarm(&format!("!!! {msg}")));
                problems.push(msg);
            }
        }
        _ => {
            let msg = format!(
                "the established connection to payments:8080 was NOT cut: line {last} (sent at {:+} ms after the push) was still echoed",
                ms(l.sent[last])
            );
            println!("  {}", st.alarm(&format!("!!! {msg}")));
            problems.push(msg);
        }
    }
    Ok(())
}

/// What the talker thread saw: when each line was sent, and when its echo came back.
#[derive(Default)]
pub(crate) struct Talk {
    pub(crate) sent: Vec<Instant>,
    pub(crate) echoed: Vec<Option<Instant>>,
    pub(crate) error: Option<String>,
}

/// Sends "line N" every `TALK_PERIOD` and records the echoes, until `stop`.
pub(crate) fn talk(mut s: TcpStream, stop: &AtomicBool, log: &Mutex<Talk>) {
    let mut next = Instant::now();
    let mut pending = Vec::new();
    let mut chunk = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= next {
            let seq = log.lock().unwrap().sent.len();
            if let Err(e) = s.write_all(format!("line {seq}\n").as_bytes()) {
                log.lock().unwrap().error = Some(e.to_string());
                return;
            }
            let mut l = log.lock().unwrap();
            l.sent.push(now);
            l.echoed.push(None);
            next += TALK_PERIOD;
            continue;
        }
        let wait = (next - now).min(Duration::from_millis(50)).max(Duration::from_millis(1));
        let _ = s.set_read_timeout(Some(wait));
        match s.read(&mut chunk) {
            Ok(0) => {
                log.lock().unwrap().error = Some("closed by payments".into());
                return;
            }
            Ok(n) => {
                pending.extend_from_slice(&chunk[..n]);
                while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=i).collect();
                    let seq = std::str::from_utf8(&line)
                        .ok()
                        .and_then(|l| l.trim().strip_prefix("line "))
                        .and_then(|n| n.parse::<usize>().ok());
                    let mut l = log.lock().unwrap();
                    if let Some(slot) = seq.and_then(|n| l.echoed.get_mut(n)) {
                        *slot = Some(Instant::now());
                    }
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => {
                log.lock().unwrap().error = Some(e.to_string());
                return;
            }
        }
    }
}
