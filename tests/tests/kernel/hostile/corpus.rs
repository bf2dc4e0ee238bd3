//! Hostile packets: the generated corpus from a denied and from an allowed segment.
use super::*;

#[test]
fn hostile_frames_from_a_denied_segment_reach_nothing_and_are_all_counted() {
    let lan = Lan::new(&HOSTS);
    let (pay, attacker) = (&lan.hosts[0], &lan.hosts[2]);
    let (link_pay, link_att) = direct_link(&pay.ns, &attacker.ns);
    let (link_mac, _) = link(&pay.ns, &link_pay);
    let (lan_mac, switch_port) = link(&pay.ns, &pay.iface);
    let server = Sniffer::start(&pay.ns);
    let witness = Sniffer::start(&lan.switch);

    // Calibration, before the agent runs: the server's packet socket sees every frame of the
    // corpus, malformed ones included, so that later "none seen" means the datapath dropped them.
    let mut unenforced = Vec::new();
    for family in [4u8, 6] {
        let (src, dst) = if family == 4 { (attacker.v4, pay.v4) } else { (attacker.v6, pay.v6) };
        unenforced.push(send_corpus(&attacker.ns, &link_att, family, ROLE_UNENFORCED, &link_mac, src, dst, false));
    }
    settle();

    let dir = TempDir::new();
    let agent = Agent::start(&pay.ns, &[&pay.iface, &link_pay], Some(&dir.file("p.yaml", POLICY)));

    // Over the direct link every byte sent reaches XDP: the counters must account for each
    // frame exactly (malformed, fragment and rule drops) or at least (default drops).
    let mut problems = Vec::new();
    let mut direct = Vec::new();
    for family in [4u8, 6] {
        let (src, dst) = if family == 4 { (attacker.v4, pay.v4) } else { (attacker.v6, pay.v6) };
        let before = counters(&agent);
        let t = Instant::now();
        let c = send_corpus(&attacker.ns, &link_att, family, ROLE_ATTACKER_LINK, &link_mac, src, dst, false);
        let secs = t.elapsed().as_secs_f64();
        let d = delta(&before, &settled(&agent));
        eprintln!(
            "IPv{family} corpus from the attacker over a direct link: {} frames ({} malformed, {} later fragments, \
             {} denied by default, {} denied by rule) in {secs:.1} s\n{}\n  counters: {}",
            c.frames.len(),
            c.count("malformed"),
            c.count("fragment"),
            c.count("default"),
            c.count("rule"),
            c.summary(),
            nonzero(&d)
        );
        if c.count("pass") != 0 {
            problems.push(format!("IPv{family}: the denied corpus has frames labelled pass"));
        }
        account(&c, &d, &mut problems);
        direct.push(c);
    }
    let lost_in_link = link_lost(&attacker.ns, &link_att);

    // The same corpus through the switch, to the server's address on the LAN.
    let mut switched = Vec::new();
    for family in [4u8, 6] {
        let (src, dst) = if family == 4 { (attacker.v4, pay.v4) } else { (attacker.v6, pay.v6) };
        let before = counters(&agent);
        let c = send_corpus(&attacker.ns, &attacker.iface, family, ROLE_ATTACKER_SWITCH, &lan_mac, src, dst, false);
        switched.push((c, delta(&before, &settled(&agent))));
    }

    let seen = server.stop();
    let delivered = witness.stop();
    eprintln!("direct link: {lost_in_link} frames lost in the link before the datapath");
    if lost_in_link != 0 {
        problems.push(format!("{lost_in_link} frames were lost in the link before the datapath saw them"));
    }
    for c in &unenforced {
        let got = marked(&seen, ROLE_UNENFORCED, c.family, |s| s.pkttype != PACKET_OUTGOING);
        // Except tagged frames shorter than 20 bytes: the kernel cannot untag them and frees
        // them before any packet tap (the datapath still sees and counts them).
        let visible: BTreeSet<u16> = (0..c.frames.len() as u16)
            .filter(|&i| {
                let f = &c.frames[i as usize];
                f.3 == 0 || f.2 >= 20
            })
            .collect();
        eprintln!(
            "IPv{} without the agent: the server's packet socket saw {} of {} frames ({} tagged frames too short to untag)",
            c.family,
            got.len(),
            c.frames.len(),
            c.frames.len() - visible.len()
        );
        if got != visible {
            let diff: Vec<_> = got.symmetric_difference(&visible).map(|&i| &c.frames[i as usize]).collect();
            problems.push(format!(
                "IPv{}: without the agent the packet socket saw other frames than expected: {diff:?}",
                c.family
            ));
        }
    }
    for c in &direct {
        let got = marked(&seen, ROLE_ATTACKER_LINK, c.family, |s| s.pkttype != PACKET_OUTGOING);
        eprintln!(
            "IPv{} over the direct link: the server's packet socket saw {} of {} frames",
            c.family,
            got.len(),
            c.frames.len()
        );
        if !got.is_empty() {
            problems.push(format!(
                "IPv{}: frames from the denied segment reached the server: {:?}",
                c.family,
                c.kinds_of(&got)
            ));
        }
    }
    for (c, d) in &switched {
        let got = marked(&seen, ROLE_ATTACKER_SWITCH, c.family, |s| s.pkttype != PACKET_OUTGOING);
        let on_link = marked(&delivered, ROLE_ATTACKER_SWITCH, c.family, |s| {
            s.ifindex == switch_port && s.pkttype == PACKET_OUTGOING
        });
        let all: BTreeSet<u16> = (0..c.frames.len() as u16).collect();
        let lost: Vec<u16> = all.difference(&on_link).copied().collect();
        let drops: u64 = DROPS.iter().map(|k| d[*k]).sum();
        let malformed_on_link = on_link.iter().filter(|&&i| c.frames[i as usize].1 == "malformed").count();
        let lost: Vec<_> = lost
            .iter()
            .map(|&i| {
                let f = &c.frames[i as usize];
                format!("{} ({} bytes, {} tags)", f.0, f.2, f.3)
            })
            .collect();
        eprintln!(
            "IPv{} through the switch: {} frames sent, {} delivered to the server's link (the switch dropped {:?}), \
             {} seen by the server's packet socket; {} of the {} malformed frames delivered were counted malformed \
             (the switch hands the outer VLAN tag over out of band: three tags look like two); counters: {}",
            c.family,
            c.frames.len(),
            on_link.len(),
            lost,
            got.len(),
            d["drop_malformed"],
            malformed_on_link,
            nonzero(d)
        );
        if !got.is_empty() {
            problems.push(format!(
                "IPv{} through the switch: frames from the denied segment reached the server: {:?}",
                c.family,
                c.kinds_of(&got)
            ));
        }
        // Not a vacuous pass: the switch delivers nearly all of the corpus.
        if on_link.len() * 10 < c.frames.len() * 9 {
            problems.push(format!(
                "IPv{}: the switch delivered only {} of {} frames",
                c.family,
                on_link.len(),
                c.frames.len()
            ));
        }
        if drops < on_link.len() as u64 {
            problems.push(format!(
                "IPv{} through the switch: {drops} drops counted for {} frames delivered",
                c.family,
                on_link.len()
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn from_an_allowed_segment_only_the_well_formed_allowed_frames_reach_the_server() {
    let lan = Lan::new(&HOSTS);
    let (pay, front) = (&lan.hosts[0], &lan.hosts[1]);
    let (link_pay, link_front) = direct_link(&pay.ns, &front.ns);
    let dir = TempDir::new();
    let agent = Agent::start(&pay.ns, &[&pay.iface, &link_pay], Some(&dir.file("p.yaml", POLICY)));
    let (link_mac, _) = link(&pay.ns, &link_pay);
    let server = Sniffer::start(&pay.ns);

    let mut problems = Vec::new();
    let mut sent = Vec::new();
    for family in [4u8, 6] {
        let (src, dst) = if family == 4 { (front.v4, pay.v4) } else { (front.v6, pay.v6) };
        let before = counters(&agent);
        let c = send_corpus(&front.ns, &link_front, family, ROLE_FRONTEND_LINK, &link_mac, src, dst, true);
        let d = delta(&before, &settled(&agent));
        eprintln!(
            "IPv{family} corpus from the frontend over a direct link: {} frames: {} well-formed and allowed, \
             {} malformed, {} later fragments without an allowed first, {} denied by default, {} denied by rule\n{}\n  counters: {}",
            c.frames.len(),
            c.count("pass"),
            c.count("malformed"),
            c.count("fragment"),
            c.count("default"),
            c.count("rule"),
            c.summary(),
            nonzero(&d)
        );
        account(&c, &d, &mut problems);
        sent.push(c);
    }
    let lost_in_link = link_lost(&front.ns, &link_front);

    let seen = server.stop();
    eprintln!("direct link: {lost_in_link} frames lost in the link before the datapath");
    if lost_in_link != 0 {
        problems.push(format!("{lost_in_link} frames were lost in the link before the datapath saw them"));
    }
    for c in &sent {
        let got = marked(&seen, ROLE_FRONTEND_LINK, c.family, |s| s.pkttype != PACKET_OUTGOING);
        let want = c.indices("pass");
        let missing: Vec<u16> = want.difference(&got).copied().collect();
        let extra: Vec<u16> = got.difference(&want).copied().collect();
        eprintln!(
            "IPv{}: the server's packet socket saw {} frames: {} of the {} well-formed allowed ones, {} others",
            c.family,
            got.len(),
            got.intersection(&want).count(),
            want.len(),
            extra.len()
        );
        if !missing.is_empty() {
            problems.push(format!(
                "IPv{}: well-formed allowed frames did not reach the server: {:?}",
                c.family,
                c.kinds_of(&missing)
            ));
        }
        if !extra.is_empty() {
            problems.push(format!(
                "IPv{}: frames that must be dropped reached the server: {:?}",
                c.family,
                c.kinds_of(&extra)
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
