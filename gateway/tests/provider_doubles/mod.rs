//! Local doubles of the ElevenLabs Conversational AI and OpenAI Realtime servers, speaking the
//! wire formats of `fixtures/specs/elevenlabs/agent.asyncapi.yaml` and the Realtime schemas of
//! `fixtures/specs/openai/`, on 127.0.0.1:0. Test-only: included as a module by the tests that
//! need them (`elevenlabs.rs`, `realtime.rs`).
#![allow(dead_code)] // each test binary uses a part

pub mod elevenlabs;
pub mod realtime;
