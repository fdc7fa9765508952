//! What the default (hybrid) VAD costs where it matters for density: on the clean lines of the
//! load-test sessions (`fixtures/bench`: background at −64 dBFS, speech peaks −10 to −15 dBFS)
//! Silero never runs, so a call costs what it did with webrtc-vad alone; with babble mixed
//! under the same speech at about 10 dB SNR it runs on nearly every window (babble never sits
//! still near the noise floor): a noisy line pays Silero's full price.

mod common;

use hark_engine::config::{VadConfig, VadKind};
use hark_engine::vad::VoiceDetector;

fn pcm(ulaw: &[u8]) -> Vec<i16> {
    let mut out = vec![0i16; ulaw.len()];
    hark_codecs::mulaw::decode(ulaw, &mut out);
    out
}

fn windows(pcm: &[i16]) -> (u64, u64) {
    let cfg = VadConfig {
        kind: VadKind::Hybrid,
        ..VadConfig::default()
    };
    let mut v = VoiceDetector::new(&cfg);
    let mut voiced = 0;
    for f in pcm.chunks_exact(160) {
        voiced += v.is_voiced(f) as u64;
    }
    assert!(voiced > 0, "the speech is heard");
    (v.neural_windows(), pcm.len() as u64 / 256)
}

#[test]
fn clean_lines_run_no_network_and_noisy_ones_do() {
    assert_eq!(VadConfig::default().kind, VadKind::Hybrid);
    for name in ["support", "interrupts", "calm", "short"] {
        let audio = std::fs::read(common::fixture(&format!("bench/{name}.ulaw"))).unwrap();
        let (run, _) = windows(&pcm(&audio));
        assert_eq!(run, 0, "{name}: Silero ran on a clean line");
    }
    // The support session with babble (the turn-taking corpus's) 10 dB below its speech.
    let speech = pcm(&std::fs::read(common::fixture("bench/support.ulaw")).unwrap());
    let babble = common::wav_s16("turns/noise/babble.wav");
    // The babble is at −26 dBFS RMS; the session's speech is about 10 dB louder than that.
    let noisy: Vec<i16> = speech
        .iter()
        .enumerate()
        .map(|(i, &s)| s.saturating_add(babble[i % babble.len()]))
        .collect();
    let (run, all) = windows(&noisy);
    assert!(
        run * 10 >= all * 9,
        "Silero runs on a noisy line: {run}/{all}"
    );
    eprintln!("babble under the support session: Silero on {run} of {all} windows");
}
