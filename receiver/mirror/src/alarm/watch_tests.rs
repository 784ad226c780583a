//! The alarm at the applier, with a real mirror, history and audit trail:
//! a ransomware run raises it once, with the instant before its first op,
//! the tree as of that instant comes back, and the acknowledgements carry
//! it until the operator clears it.

use std::fs;

use lifeline_core::credential::MachineName;
use lifeline_proto::v1::{Chunk, FileData, Op, OpBatch, Rename};
use lifeline_store::{Db, StoreLayout};

use super::detector::tests::random;
use crate::apply::tests::{data, Fixture};
use lifeline_history::{alarm, Clock};

fn text(i: usize) -> Vec<u8> {
    format!("{i}: a line of a document nobody wants to lose\n").bytes().cycle().take(2000 + i * 7).collect()
}

fn batch(ops: Vec<Op>) -> OpBatch {
    OpBatch { ops }
}

#[test]
fn a_ransomware_run_raises_once_and_the_tree_before_it_comes_back() {
    let mut f = Fixture::new().watched();
    let (layout, machine) = (StoreLayout::new(f._store.path()), MachineName::new("m").unwrap());
    for i in 0..300 {
        f.clock.advance(1_000_000);
        f.op(format!("docs/f{i}.txt").as_bytes(), data(&text(i), 0o644)).unwrap();
    }
    f.applier.sync().unwrap();
    assert!(alarm::standing(&layout.history(&machine)).unwrap().is_none(), "ordinary writes raise nothing");
    f.clock.advance(1_000_000_000);
    let attack_start = f.clock.now_ns();
    let mut seq = f.seq;
    let mut acks = Vec::new();
    for chunk in (0..300).collect::<Vec<_>>().chunks(50) {
        let mut ops = Vec::new();
        for &i in chunk {
            let p = format!("docs/f{i}.txt").into_bytes();
            let bytes = random(i as u64, 2000 + i * 7);
            seq += 1;
            let d = FileData {
                replace: false,
                truncate_to: Some(0),
                size: bytes.len() as u64,
                chunks: vec![Chunk { offset: 0, data: bytes }],
                attr: Some(crate::apply::tests::attr(0o644, 1_700_000_000)),
            };
            ops.push(Op { seq, path: p.clone(), kind: Some(lifeline_proto::v1::op::Kind::Data(d)), origin: 0 });
            seq += 1;
            let to = [p.clone(), b".locked".to_vec()].concat();
            let r = Rename { to, exchange: false };
            ops.push(Op { seq, path: p, kind: Some(lifeline_proto::v1::op::Kind::Rename(r)), origin: 0 });
        }
        f.clock.advance(1_000_000);
        acks.push(f.applier.apply_batch(&batch(ops), &|| false).unwrap());
        f.applier.sync().unwrap();
    }
    let a = alarm::standing(&layout.history(&machine)).unwrap().expect("raised");
    assert!(a.last_good_ns < attack_start + 1_000_000 && a.last_good_ns >= attack_start, "{a:?}");
    assert!(a.reason.contains("files rewritten") && a.reason.contains(".locked"), "{}", a.reason);
    assert!(acks[0].alarm.is_none() || acks[1].alarm.is_some());
    let carried = acks.last().unwrap().alarm.clone().expect("the acks carry it");
    assert!(carried.text.contains("history alarm clear --machine m"), "{}", carried.text);
    let trail = Db::open(f._store.path()).unwrap().audit_trail(10).unwrap();
    assert_eq!(trail.iter().filter(|e| e.event == "alarm raised").count(), 1, "raised once: {trail:?}");

    let out = tempfile::tempdir().unwrap();
    crate::restore::restore_as_of(&layout, &machine, a.last_good_ns, b"docs", out.path()).unwrap();
    for i in 0..300 {
        assert_eq!(fs::read(out.path().join(format!("docs/f{i}.txt"))).unwrap(), text(i), "f{i}");
    }
    assert_eq!(fs::read_dir(out.path().join("docs")).unwrap().count(), 300);

    // Cleared by the operator: the next ack has none, and the detector is armed again.
    assert!(alarm::clear(&layout.history(&machine)).unwrap());
    f.seq = seq;
    f.clock.advance(1_000_000);
    let ack = f.applier.apply_batch(&batch(vec![]), &|| false).unwrap();
    assert!(ack.alarm.is_none());
    for i in 0..120 {
        f.op(
            format!("docs/f{i}.txt.locked").as_bytes(),
            crate::apply::tests::rename(format!("docs/f{i}.txt.locked.x").as_bytes(), false),
        )
        .unwrap();
    }
    assert!(alarm::standing(&layout.history(&machine)).unwrap().is_some(), "raised again");
}
