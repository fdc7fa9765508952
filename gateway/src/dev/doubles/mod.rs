//! Local doubles of the providers hark talks to, speaking their exact wire formats, for
//! `hark bench` and trying agents offline. Checked against the official specs in
//! `fixtures/specs/` by the tests. (The ElevenLabs and Realtime doubles only serve the tests and
//! live with them, in `gateway/tests/provider_doubles/`.)
pub mod openai;
