//! Call audio recorded by hark (`HARK_RECORD`, `hark_record`): a simulator call against the
//! in-process server with the echo agent, and the WAV it leaves compared with what the
//! simulator sent (left channel) and what its virtual phone heard (right channel), a barge-in's
//! `clear` included; the record, the `call.ended` event and `GET /calls/{sid}/recording.wav`
//! link it; a call not recorded leaves nothing; the retention sweep deletes old files.

mod in_process;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hark_codecs::mulaw::decode_sample;
use hark_gateway::api::ApiState;
use hark_gateway::config::Config;
use hark_gateway::recording::{self, RecordSettings};
use hark_gateway::simulator::{self, CallSetup, Report};
use serde_json::Value;

const KEY: &str = "recording-test-key-0123456789";
/// One 20 ms frame, samples.
const FRAME: usize = 160;

/// A fresh temporary directory (removed on drop).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p = std::env::temp_dir().join(format!("hark-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The gateway API on an in-memory database, with an API key, and call events queued for a
/// backend that never answers (so `call.ended` stays in the outbox to be read).
async fn api() -> Arc<ApiState> {
    let env = [
        ("HARK_DATABASE_URL", "sqlite::memory:"),
        ("HARK_API_KEY", KEY),
        ("HARK_OPERATOR_SECRET", "recording-test-secret"),
        ("HARK_EVENTS_URL", "http://127.0.0.1:9/events"),
    ];
    ApiState::from_lookup(|k| {
        env.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| (*v).to_owned())
    })
    .await
    .expect("api state")
}

fn wav_channels(path: &Path) -> (Vec<i16>, Vec<i16>) {
    let mut r = hound::WavReader::open(path).expect("a WAV");
    let spec = r.spec();
    assert_eq!(
        (spec.channels, spec.sample_rate, spec.bits_per_sample),
        (2, 8_000, 16)
    );
    let all: Vec<i16> = r.samples::<i16>().map(|s| s.expect("sample")).collect();
    let left = all.iter().step_by(2).copied().collect();
    let right = all.iter().skip(1).step_by(2).copied().collect();
    (left, right)
}

fn pcm(mulaw: &[u8]) -> Vec<i16> {
    mulaw.iter().map(|&b| decode_sample(b)).collect()
}

/// Samples where `a[at + i + lag]` and `b[i]` differ (`a` short: silence).
fn mismatches(a: &[i16], b: &[i16], at: usize, lag: isize) -> usize {
    (0..b.len())
        .filter(|&i| {
            let j = (at + i) as isize + lag;
            let x = if j >= 0 {
                a.get(j as usize).copied().unwrap_or(0)
            } else {
                0
            };
            x != b[i]
        })
        .count()
}

/// The lag within one frame at which `frame` (heard at `at`) is in `a` exactly, nearest
/// first.
fn find(a: &[i16], frame: &[i16], at: usize) -> Option<isize> {
    (0..=FRAME as isize)
        .flat_map(|d| [d, -d])
        .find(|&lag| mismatches(a, frame, at, lag) == 0)
}

/// The bursts of `pcm`: stretches of sound apart by more than 100 ms of digital silence.
fn segments(pcm: &[i16]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    let mut zeros = 0;
    for (i, &s) in pcm.iter().enumerate() {
        if s == 0 {
            zeros += 1;
            continue;
        }
        match out.last_mut() {
            Some(last) if zeros <= 800 => last.1 = i + 1,
            _ => out.push((i, i + 1)),
        }
        zeros = 0;
    }
    out
}

async fn call(url: &str, audio: &Arc<[u8]>, params: &[(&str, &str)]) -> Report {
    let mut setup = CallSetup::new(url.to_owned(), audio.clone());
    setup.speed = 1.0;
    setup.keep_heard = true;
    setup.start.custom_parameters = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let report = simulator::run_call(setup).await.expect("call");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    report
}

/// A call with `hark_record=1` on a server that does not record by default, and one without
/// it at the same time: the first leaves a WAV equal to what the simulator sent and heard
/// (within one frame of alignment, the `clear`-cut audio absent), linked from the record,
/// `call.ended` and the API; the second leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_call_holds_what_the_simulator_sent_and_heard() {
    let dir = TempDir::new("recording");
    let api = api().await;
    let server = in_process::Server::start(
        Config {
            workers: 1,
            recording: RecordSettings {
                enabled: false,
                dir: dir.0.clone(),
                retention_days: 0,
            },
            ..Config::default()
        },
        Some(api.clone()),
    )
    .await;
    // The first two turns of the session (10 s): the echo agent answers the first, and the
    // caller's second turn talks over that answer (a barge-in and its `clear`).
    let all = std::fs::read(in_process::fixture("audio/multi-turn-8k.ulaw")).expect("audio");
    let audio: Arc<[u8]> = Arc::from(&all[..10_000 * 8]);
    let short: Arc<[u8]> = Arc::from(&all[..1_000 * 8]);
    let (report, other) = tokio::join!(
        call(&server.url, &audio, &[("hark_record", "1")]),
        call(&server.url, &short, &[]),
    );
    let record = server
        .record(&report.call_sid, Duration::from_secs(10))
        .await;
    let not_recorded = server
        .record(&other.call_sid, Duration::from_secs(10))
        .await;
    assert_eq!(not_recorded.audio, None, "{:?}", not_recorded.summary);
    assert!(
        report.clears >= 1 && report.cleared_ms > 0,
        "a barge-in: {report:?}"
    );

    // The record links the file; exactly one file was written.
    let audio_info = record
        .audio
        .clone()
        .expect("the record links the recording");
    assert_eq!(record.summary["audio"], audio_info);
    let file = PathBuf::from(audio_info["file"].as_str().expect("file"));
    let files: Vec<_> = std::fs::read_dir(&dir.0).unwrap().flatten().collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].path(), file);
    assert_eq!(
        audio_info["url"],
        format!("/calls/{}/recording.wav", report.call_sid)
    );
    let (left, right) = wav_channels(&file);
    assert_eq!(left.len(), right.len());
    assert_eq!(
        audio_info["duration_ms"].as_u64(),
        Some(left.len() as u64 / 8)
    );

    // Left: the caller's audio exactly where its timestamps put it.
    let sent = pcm(&audio);
    assert!(left.len() >= sent.len(), "{} < {}", left.len(), sent.len());
    assert_eq!(
        mismatches(&left, &sent, 0, 0),
        0,
        "the caller channel is what was sent"
    );

    // Right: what the phone heard. Every 20 ms of each burst the phone heard is on the agent
    // channel exactly, within one frame of where the phone heard it.
    let heard = pcm(report.heard.as_deref().expect("heard"));
    let bursts = segments(&heard);
    assert_eq!(bursts.len() as u64, report.bursts, "{bursts:?}");
    let mut covered = vec![false; right.len().max(heard.len())];
    for &(s, e) in &bursts {
        let windows: Vec<usize> = (s..e.saturating_sub(FRAME)).step_by(FRAME).collect();
        let lags: Vec<Option<isize>> = windows
            .iter()
            .map(|&i| find(&right, &heard[i..i + FRAME], i))
            .collect();
        let missing = lags.iter().filter(|l| l.is_none()).count();
        let (lo, hi) = lags
            .iter()
            .flatten()
            .fold((isize::MAX, isize::MIN), |(lo, hi), &l| {
                (lo.min(l), hi.max(l))
            });
        eprintln!(
            "burst {s}..{e} ({} ms): {} frames, {missing} not found, lag {lo}..={hi} samples",
            (e - s) / 8,
            windows.len()
        );
        // A frame cut by a playout underrun may sit a little apart from its neighbours.
        assert!(
            missing <= 1 + 2 * report.underruns as usize,
            "burst {s}..{e}: {missing} of {} frames not on the agent channel",
            windows.len()
        );
        let end = (e + FRAME).min(covered.len());
        covered[s.saturating_sub(FRAME)..end].fill(true);
    }
    // Nothing else on the agent channel (one frame of tolerance at each burst's ends): in
    // particular not the audio the clear cut, which Twilio had queued when the clear came and
    // which would follow the interrupted burst.
    assert!(
        report.cleared_ms >= 60,
        "enough was cut to tell: {}",
        report.cleared_ms
    );
    let stray: Vec<usize> = (0..right.len())
        .filter(|&i| right[i] != 0 && !covered[i])
        .collect();
    assert!(
        stray.is_empty(),
        "{} agent samples the phone never heard, first at {:?} (cleared {} ms)",
        stray.len(),
        stray.first(),
        report.cleared_ms
    );

    // The `call.ended` event links it too.
    let events = api.store().outbox_events(None).await.expect("outbox");
    let ended = events
        .iter()
        .find(|e| e.call_sid == report.call_sid && e.event_type == "call.ended")
        .expect("call.ended");
    let body: Value = serde_json::from_str(&ended.body).expect("json");
    assert_eq!(body["data"]["audio"], audio_info);
    let other_ended = events
        .iter()
        .find(|e| e.call_sid == other.call_sid && e.event_type == "call.ended")
        .expect("call.ended");
    let body: Value = serde_json::from_str(&other_ended.body).expect("json");
    assert_eq!(body["data"]["audio"], Value::Null);

    // And the API serves it, to API keys only.
    let http = reqwest::Client::new();
    let url = format!(
        "http://{}/calls/{}/recording.wav",
        server.addr, report.call_sid
    );
    let denied = http.get(&url).send().await.expect("request");
    assert_eq!(denied.status(), 401);
    let got = http
        .get(&url)
        .bearer_auth(KEY)
        .send()
        .await
        .expect("request");
    assert_eq!(got.status(), 200);
    assert_eq!(got.headers()["content-type"], "audio/wav");
    let bytes = got.bytes().await.expect("body");
    assert_eq!(bytes.as_ref(), std::fs::read(&file).unwrap().as_slice());
    let missing = format!(
        "http://{}/calls/{}/recording.wav",
        server.addr, other.call_sid
    );
    let none = http
        .get(&missing)
        .bearer_auth(KEY)
        .send()
        .await
        .expect("request");
    assert_eq!(none.status(), 404);
    server.stop().await;
}

/// The sweep deletes recordings older than the retention, and only recordings.
#[tokio::test]
async fn the_retention_sweep_deletes_old_recordings() {
    let dir = TempDir::new("retention");
    let old = SystemTime::now() - Duration::from_secs(3 * 86_400);
    let touch = |name: &str, at: SystemTime| {
        let f = std::fs::File::create(dir.0.join(name)).unwrap();
        f.set_modified(at).unwrap();
    };
    touch("CAold-MZ1.wav", old);
    touch("CAold-MZ2.wav.part", old);
    touch("notes.txt", old);
    touch("CAnew-MZ3.wav", SystemTime::now());
    let names = || {
        let mut v: Vec<String> = std::fs::read_dir(&dir.0)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    // Two days: nothing is that old yet at four.
    let n = recording::sweep(&dir.0, Duration::from_secs(4 * 86_400), SystemTime::now()).unwrap();
    assert_eq!(n, 0);
    // The sweeper a server starts with a retention of 2 days runs at once.
    let settings = RecordSettings {
        enabled: true,
        dir: dir.0.clone(),
        retention_days: 2,
    };
    let sweeper = recording::start_sweeper(&settings).expect("a retention is set");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while names().len() > 2 {
        assert!(std::time::Instant::now() < deadline, "{:?}", names());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sweeper.abort();
    assert_eq!(names(), ["CAnew-MZ3.wav", "notes.txt"]);
    // No retention: no sweeper.
    assert!(recording::start_sweeper(&RecordSettings::default()).is_none());
    // A folder that does not exist (yet) is nothing to sweep.
    let gone = dir.0.join("missing");
    assert_eq!(
        recording::sweep(&gone, Duration::ZERO, SystemTime::now()).unwrap(),
        0
    );
}
