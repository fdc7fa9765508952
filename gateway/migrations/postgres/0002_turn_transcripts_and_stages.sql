-- Per-turn transcripts of both sides and stage telemetry.
-- `text` stays the caller's words; `agent_text` is what the caller heard of the answer (the
-- agent's transcript, cut at a barge-in).
ALTER TABLE turns ADD COLUMN agent_text TEXT;
-- Caller's last voiced frame -> the caller began hearing the answer (first mark echo minus the
-- audio it covers): voice-to-voice at the phone.
ALTER TABLE turns ADD COLUMN heard_latency_ms BIGINT;
-- Stage latencies the agent reported for this turn, ms (NULL when the agent has no such stage).
ALTER TABLE turns ADD COLUMN stt_ms BIGINT;           -- turn end -> final transcript
ALTER TABLE turns ADD COLUMN llm_ttft_ms BIGINT;      -- LLM request -> first token
ALTER TABLE turns ADD COLUMN tts_ttfb_ms BIGINT;      -- first TTS request -> first audio byte
ALTER TABLE turns ADD COLUMN first_audio_ms BIGINT;   -- speech-to-speech: provider's end of turn -> first answer audio
