-- What the caller heard of the agent's answer to each turn (the provider's transcript, cut at
-- the barge-in); `text` stays the caller's words.
ALTER TABLE turns ADD COLUMN agent_text TEXT;
