//! Local doubles of the providers hark talks to, speaking their exact wire formats, for tests,
//! `hark bench` and trying agents offline. Each is checked against the official specs in
//! `shared/specs/` by the tests.
pub mod elevenlabs;
pub mod openai;
pub mod realtime;
